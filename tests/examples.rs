//! Every `examples/NAME.sql` is run through psql and its output compared with
//! `examples/NAME.sql.out`, so the README's examples cannot rot.
//! After a deliberate change, `EXACTLY_BLESS=1 cargo pgrx test ...` rewrites the .out files.

mod common;

#[test]
fn examples_print_their_recorded_output() {
    let failures = common::examples_that_differ();
    assert!(
        failures.is_empty(),
        "examples differ from their .out files:\n{}",
        failures.join("\n")
    );
}
