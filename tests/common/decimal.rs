//! Exact decimals for the model-based tests (numeric's arithmetic: add, negate, subtract,
//! compare), so a model compares amounts and balances the way PostgreSQL does.

use std::cmp::Ordering;
use std::fmt;

/// A decimal number: sign, digits least significant first (no leading zeros), and how many
/// of them are fractional (no trailing fractional zeros). Zero is `mag` empty, not negative.
#[derive(Clone, PartialEq, Eq)]
pub struct Dec {
    neg: bool,
    mag: Vec<u8>,
    scale: usize,
}

impl Dec {
    pub fn zero() -> Dec {
        Dec {
            neg: false,
            mag: Vec::new(),
            scale: 0,
        }
    }

    pub fn parse(text: &str) -> Dec {
        let (neg, body) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        assert!(
            int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()),
            "not a plain decimal: {text:.40}"
        );
        let mag: Vec<u8> = int
            .bytes()
            .chain(frac.bytes())
            .rev()
            .map(|b| b - b'0')
            .collect();
        Dec {
            neg,
            mag,
            scale: frac.len(),
        }
        .normalized()
    }

    fn normalized(mut self) -> Dec {
        let trailing = self
            .mag
            .iter()
            .take(self.scale)
            .take_while(|d| **d == 0)
            .count();
        self.mag.drain(..trailing);
        self.scale -= trailing;
        while self.mag.len() > self.scale && self.mag.last() == Some(&0) {
            self.mag.pop();
        }
        if self.mag.iter().all(|d| *d == 0) {
            return Dec::zero();
        }
        self
    }

    /// How many digits stand before the point.
    pub fn int_digits(&self) -> usize {
        self.mag.len().saturating_sub(self.scale)
    }

    pub fn is_negative(&self) -> bool {
        self.neg
    }

    pub fn is_zero(&self) -> bool {
        self.mag.is_empty()
    }

    fn padded(&self, scale: usize) -> Vec<u8> {
        let mut v = vec![0u8; scale - self.scale];
        v.extend_from_slice(&self.mag);
        v
    }

    fn cmp_mag(a: &[u8], b: &[u8]) -> Ordering {
        let len = |v: &[u8]| v.len() - v.iter().rev().take_while(|d| **d == 0).count();
        let (la, lb) = (len(a), len(b));
        if la != lb {
            return la.cmp(&lb);
        }
        for i in (0..la).rev() {
            match a[i].cmp(&b[i]) {
                Ordering::Equal => {}
                other => return other,
            }
        }
        Ordering::Equal
    }

    pub fn add(&self, other: &Dec) -> Dec {
        let scale = self.scale.max(other.scale);
        let (a, b) = (self.padded(scale), other.padded(scale));
        let (neg, mag) = if self.neg == other.neg {
            let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
            let mut carry = 0u8;
            for i in 0..a.len().max(b.len()) {
                let s = a.get(i).unwrap_or(&0) + b.get(i).unwrap_or(&0) + carry;
                out.push(s % 10);
                carry = s / 10;
            }
            if carry > 0 {
                out.push(carry);
            }
            (self.neg, out)
        } else {
            let (big, small, neg) = match Dec::cmp_mag(&a, &b) {
                Ordering::Less => (&b, &a, other.neg),
                _ => (&a, &b, self.neg),
            };
            let mut out = Vec::with_capacity(big.len());
            let mut borrow = 0i8;
            for i in 0..big.len() {
                let mut d = big[i] as i8 - *small.get(i).unwrap_or(&0) as i8 - borrow;
                borrow = 0;
                if d < 0 {
                    d += 10;
                    borrow = 1;
                }
                out.push(d as u8);
            }
            (neg, out)
        };
        Dec { neg, mag, scale }.normalized()
    }

    pub fn negated(&self) -> Dec {
        Dec {
            neg: !self.neg,
            ..self.clone()
        }
        .normalized()
    }

    pub fn sub(&self, other: &Dec) -> Dec {
        self.add(&other.negated())
    }

    pub fn lt(&self, other: &Dec) -> bool {
        self.sub(other).is_negative()
    }

    /// The plain decimal text (every digit).
    pub fn text(&self) -> String {
        let digits: String = self.mag.iter().rev().map(|d| (b'0' + d) as char).collect();
        let sign = if self.neg { "-" } else { "" };
        if self.scale >= digits.len() {
            let frac = format!("{}{digits}", "0".repeat(self.scale - digits.len()));
            if frac.is_empty() {
                "0".into()
            } else {
                format!("{sign}0.{frac}")
            }
        } else if self.scale == 0 {
            format!("{sign}{digits}")
        } else {
            let (int, frac) = digits.split_at(digits.len() - self.scale);
            format!("{sign}{int}.{frac}")
        }
    }
}

/// The text, shortened in the middle when longer than 60 characters (numeric's extremes
/// have over 100,000 digits).
impl fmt::Debug for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.text();
        if s.len() > 60 {
            write!(
                f,
                "{}…{} ({} characters)",
                &s[..25],
                &s[s.len() - 25..],
                s.len()
            )
        } else {
            write!(f, "{s}")
        }
    }
}
