//! Pieces of the hostile-role scripts shared by the search_path suites: objects planted in
//! `public` that shadow pg_catalog's, each calling `public.hostile_hit(what)` (which every
//! suite defines for itself) before doing what the original does.

/// The start of a hostile script: search_path pg_catalog alone, and where
/// `public.hostile_hit` keeps its evidence, open to every role: the sequence
/// `public.hostile_hits` (it survives a rollback) and the table `public.hostile_log` (what
/// ran, as whom).
pub const EVIDENCE: &str = r#"
SET search_path = pg_catalog;
CREATE SEQUENCE public.hostile_hits;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE public.hostile_hits TO PUBLIC;
CREATE TABLE public.hostile_log (what text, by_user text);
GRANT INSERT, SELECT ON public.hostile_log TO PUBLIC;
"#;

/// A SQL string literal (standard_conforming_strings is on).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A DO block creating a `public.<op>` operator for every operator of `operators` and every
/// (left, right) pair of `types` for which pg_catalog resolves that operator, returning what
/// pg_catalog's returns; then a prefix `public.-` for each type of `prefix_minus` (none when
/// empty). The block fails unless it created at least `at_least` operators in all.
pub fn operators_sql(
    operators: &[&str],
    types: &[&str],
    prefix_minus: &[&str],
    at_least: usize,
) -> String {
    let quoted = |list: &[&str]| {
        list.iter()
            .map(|s| literal(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let prefix = if prefix_minus.is_empty() {
        String::new()
    } else {
        format!(
            r#"  FOREACH r IN ARRAY ARRAY[{types}] LOOP
    n := n + 1;
    EXECUTE format($x$CREATE FUNCTION public.hostile_op_%s(b %s) RETURNS %s LANGUAGE plpgsql
      SET search_path = pg_catalog AS $b$ BEGIN PERFORM public.hostile_hit(%L); RETURN OPERATOR(pg_catalog.-) b; END $b$$x$,
      n, r, r, format('operator - (NONE, %s)', r));
    EXECUTE format('CREATE OPERATOR public.- (RIGHTARG = %s, FUNCTION = public.hostile_op_%s)', r, n);
  END LOOP;
"#,
            types = quoted(prefix_minus),
        )
    };
    format!(
        r#"
DO $do$
DECLARE
  ops text[] := ARRAY[{ops}];
  types text[] := ARRAY[{types}];
  op text; l text; r text; rt text; n int := 0;
BEGIN
  FOREACH op IN ARRAY ops LOOP
    FOREACH l IN ARRAY types LOOP
      FOREACH r IN ARRAY types LOOP
        BEGIN
          EXECUTE format('SELECT format_type(pg_typeof(NULL::%s OPERATOR(pg_catalog.%s) NULL::%s)::oid, NULL)', l, op, r) INTO rt;
        EXCEPTION WHEN OTHERS THEN CONTINUE;
        END;
        n := n + 1;
        EXECUTE format($x$CREATE FUNCTION public.hostile_op_%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql
          SET search_path = pg_catalog AS $b$ BEGIN PERFORM public.hostile_hit(%L); RETURN a OPERATOR(pg_catalog.%s) b; END $b$$x$,
          n, l, r, rt, format('operator %s (%s, %s)', op, l, r), op);
        EXECUTE format('CREATE OPERATOR public.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = public.hostile_op_%s)', op, l, r, n);
      END LOOP;
    END LOOP;
  END LOOP;
{prefix}  IF n < {at_least} THEN RAISE EXCEPTION 'only % hostile operators', n; END IF;
END $do$;
"#,
        ops = quoted(operators),
        types = quoted(types),
    )
}
