//! What an invoice number looks like and which series it belongs to: the template
//! (`INV-{yyyy}-{number}`) and the period a date falls in (`reset`). Plain Rust, no server
//! calls: the numbering itself is in `invoices`.

use std::fmt::Write;

/// When a tenant's numbering starts again at 1.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reset {
    Never,
    /// Every fiscal year, which starts on the 1st of month `fiscal_year_start`.
    Yearly,
    Monthly,
    Daily,
}

impl Reset {
    pub fn parse(text: &str) -> Option<Reset> {
        match text {
            "never" => Some(Reset::Never),
            "yearly" => Some(Reset::Yearly),
            "monthly" => Some(Reset::Monthly),
            "daily" => Some(Reset::Daily),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Reset::Never => "never",
            Reset::Yearly => "yearly",
            Reset::Monthly => "monthly",
            Reset::Daily => "daily",
        }
    }
}

/// A calendar date.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Day {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Day {
    /// The calendar year in which the fiscal year of this date starts.
    pub fn fiscal_year(self, fiscal_year_start: u8) -> i32 {
        if self.month >= fiscal_year_start {
            self.year
        } else {
            self.year - 1
        }
    }

    /// The first day of the period this date falls in (None: the series never resets).
    pub fn period(self, reset: Reset, fiscal_year_start: u8) -> Option<Day> {
        match reset {
            Reset::Never => None,
            Reset::Yearly => Some(Day { year: self.fiscal_year(fiscal_year_start), month: fiscal_year_start, day: 1 }),
            Reset::Monthly => Some(Day { day: 1, ..self }),
            Reset::Daily => Some(self),
        }
    }

    /// ISO 8601, e.g. 2026-04-01: how a period names its series (and its lock).
    pub fn iso(self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// One piece of a template.
#[derive(Clone, PartialEq, Debug)]
enum Piece {
    Text(String),
    Prefix,
    Number,
    Year,
    ShortYear,
    Month,
    DayOfMonth,
    FiscalYear,
    Tenant,
}

/// A parsed template: text and tokens.
#[derive(Clone, PartialEq, Debug)]
pub struct Template(Vec<Piece>);

/// What is wrong with a template, for the 22023 message.
pub type TemplateError = String;

/// The template of a numbering without one: `{prefix}-{number}`, or the bare number when the
/// prefix is empty — what 0.2 printed, byte for byte.
pub const DEFAULT: &str = "{prefix}-{number}";

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut pieces = vec![];
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("template {text:?} has a {{ without its }}"));
            };
            let token = &rest[open + 1..open + close];
            pieces.push(match token {
                "prefix" => Piece::Prefix,
                "number" => Piece::Number,
                "yyyy" => Piece::Year,
                "yy" => Piece::ShortYear,
                "mm" => Piece::Month,
                "dd" => Piece::DayOfMonth,
                "fy" => Piece::FiscalYear,
                "tenant" => Piece::Tenant,
                other => {
                    return Err(format!(
                        "template {text:?} has an unknown token {{{other}}}; tokens: {{prefix}} {{number}} \
                         {{yyyy}} {{yy}} {{mm}} {{dd}} {{fy}} {{tenant}}"
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        if !pieces.contains(&Piece::Number) {
            return Err(format!("template {text:?} has no {{number}}"));
        }
        Ok(Template(pieces))
    }

    /// Whether two numbers of different periods of `reset` can never print alike: the
    /// template shows what tells the periods apart (a calendar year tells fiscal years apart
    /// only when they are calendar years, or with the month beside it).
    pub fn tells_periods_apart(&self, reset: Reset, fiscal_year_start: u8) -> bool {
        let has = |p: &[Piece]| p.iter().any(|x| self.0.contains(x));
        let calendar_year = has(&[Piece::Year, Piece::ShortYear]);
        let year = calendar_year || has(&[Piece::FiscalYear]);
        let month = has(&[Piece::Month]);
        match reset {
            Reset::Never => true,
            Reset::Yearly => has(&[Piece::FiscalYear]) || (calendar_year && (fiscal_year_start == 1 || month)),
            Reset::Monthly => year && month,
            Reset::Daily => year && month && has(&[Piece::DayOfMonth]),
        }
    }

    /// The number `number` of `tenant`, dated `date`, as text; `{number}` is zero-padded to
    /// `width` and never cut.
    #[allow(clippy::too_many_arguments)]
    pub fn render(
        &self,
        prefix: &str,
        tenant: &str,
        number: i64,
        width: usize,
        date: Day,
        fiscal_year_start: u8,
    ) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            let _ = match piece {
                Piece::Text(text) => write!(out, "{text}"),
                Piece::Prefix => write!(out, "{prefix}"),
                Piece::Number => write!(out, "{number:0width$}"),
                Piece::Year => write!(out, "{:04}", date.year),
                Piece::ShortYear => write!(out, "{:02}", date.year.rem_euclid(100)),
                Piece::Month => write!(out, "{:02}", date.month),
                Piece::DayOfMonth => write!(out, "{:02}", date.day),
                Piece::FiscalYear => write!(out, "{:04}", date.fiscal_year(fiscal_year_start)),
                Piece::Tenant => write!(out, "{tenant}"),
            };
        }
        out
    }

    /// Whether this is the default template: then an empty prefix drops its `-` too.
    pub fn is_default(&self) -> bool {
        *self == Template::parse(DEFAULT).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(year: i32, month: u8, day: u8) -> Day {
        Day { year, month, day }
    }

    #[test]
    fn the_default_template_prints_0_2s_numbers() {
        let t = Template::parse(DEFAULT).unwrap();
        assert!(t.is_default());
        assert_eq!(t.render("11", "11", 1, 8, day(2026, 1, 1), 1), "11-00000001");
        assert_eq!(t.render("11", "11", 123_456_789, 8, day(2026, 1, 1), 1), "11-123456789");
    }

    #[test]
    fn tokens_render_from_the_date_and_the_fiscal_year() {
        let t = Template::parse("INV-{fy}/{yy}{mm}{dd}-{tenant}-{prefix}{number}").unwrap();
        assert_eq!(t.render("P", "acme:A", 7, 4, day(2026, 3, 31), 4), "INV-2025/260331-acme:A-P0007");
        assert_eq!(t.render("P", "acme:A", 7, 4, day(2026, 4, 1), 4), "INV-2026/260401-acme:A-P0007");
        assert_eq!(Template::parse("{yyyy}{number}").unwrap().render("", "t", 5, 1, day(2026, 12, 31), 1), "20265");
    }

    #[test]
    fn unknown_tokens_and_templates_without_number_are_refused() {
        assert!(Template::parse("INV-{year}-{number}").unwrap_err().contains("unknown token {year}"));
        assert!(Template::parse("INV-{yyyy}").unwrap_err().contains("no {number}"));
        assert!(Template::parse("INV-{number").unwrap_err().contains("without its }"));
    }

    #[test]
    fn periods_start_where_the_reset_says() {
        let d = day(2026, 3, 31);
        assert_eq!(d.period(Reset::Never, 1), None);
        assert_eq!(d.period(Reset::Yearly, 1), Some(day(2026, 1, 1)));
        assert_eq!(d.period(Reset::Yearly, 4), Some(day(2025, 4, 1)));
        assert_eq!(day(2026, 4, 1).period(Reset::Yearly, 4), Some(day(2026, 4, 1)));
        assert_eq!(d.period(Reset::Monthly, 4), Some(day(2026, 3, 1)));
        assert_eq!(d.period(Reset::Daily, 4), Some(d));
    }

    #[test]
    fn a_periodic_template_must_tell_its_periods_apart() {
        let t = |s: &str| Template::parse(s).unwrap();
        assert!(t("{prefix}-{number}").tells_periods_apart(Reset::Never, 1));
        assert!(!t("{prefix}-{number}").tells_periods_apart(Reset::Yearly, 1));
        assert!(t("{fy}-{number}").tells_periods_apart(Reset::Yearly, 4));
        assert!(t("{yyyy}-{number}").tells_periods_apart(Reset::Yearly, 1));
        assert!(!t("{yyyy}-{number}").tells_periods_apart(Reset::Yearly, 4));
        assert!(t("{yyyy}{mm}-{number}").tells_periods_apart(Reset::Yearly, 4));
        assert!(!t("{yyyy}-{number}").tells_periods_apart(Reset::Monthly, 1));
        assert!(t("{yyyy}-{mm}-{number}").tells_periods_apart(Reset::Monthly, 1));
        assert!(t("{yyyy}{mm}{dd}-{number}").tells_periods_apart(Reset::Daily, 1));
    }
}
