//! pg_exactly: race-free building blocks for PostgreSQL, one module per primitive.

::pgrx::pg_module_magic!(name, version);

mod claims;
mod errors;
mod invoices;
mod ledger;
mod locks;
mod privileges;
mod spi_plans;
mod subtransaction;
mod tickets;
mod trigger_rows;
mod upsert;
mod user_tables;
mod xact_lock;

pgrx::extension_sql_file!("../sql/invoices.sql", name = "invoices_schema", bootstrap);
pgrx::extension_sql_file!("../sql/tickets.sql", name = "tickets_schema");
pgrx::extension_sql_file!("../sql/ledger.sql", name = "ledger_schema");
pgrx::extension_sql_file!("../sql/claims.sql", name = "claims_schema");
pgrx::extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

/// Runs once when a backend loads the library.
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    user_tables::register_invalidation_callback();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
