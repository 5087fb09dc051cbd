//! pg_exactly: race-free building blocks for PostgreSQL, one module per primitive.

::pgrx::pg_module_magic!(name, version);

/// The `pg_finfo_*` record the server looks up beside a C function's symbol (version-1
/// calling convention), for the entry points declared by hand in sql/ (triggers, and the
/// 0.2.0 upgrade's key conversion) rather than by `#[pg_extern]`.
macro_rules! finfo_v1 {
    ($finfo:ident) => {
        #[no_mangle]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1: pgrx::pg_sys::Pg_finfo_record = pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}
pub(crate) use finfo_v1;

mod claims;
mod early_release;
mod errors;
mod holds;
mod invoice_templates;
mod invoices;
mod leases;
mod ledger;
mod locks;
mod privileges;
mod slots;
mod spi_plans;
mod subtransaction;
mod tickets;
mod transfers;
mod trigger_rows;
mod upsert;
mod user_tables;
mod xact_lock;

pgrx::extension_sql_file!("../sql/invoices.sql", name = "invoices_schema", bootstrap);
pgrx::extension_sql_file!("../sql/tickets.sql", name = "tickets_schema");
pgrx::extension_sql_file!("../sql/ledger.sql", name = "ledger_schema", requires = [early_release::flush_log]);
pgrx::extension_sql_file!("../sql/claims.sql", name = "claims_schema");
pgrx::extension_sql_file!("../sql/coordination.sql", name = "coordination_schema");
pgrx::extension_sql_file!(
    "../sql/shard.sql",
    name = "shard_schema",
    requires = ["tickets_schema", "ledger_schema", "claims_schema"]
);
pgrx::extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

/// Runs once when a backend loads the library.
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    user_tables::register_invalidation_callback();
    early_release::init();
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
