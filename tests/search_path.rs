//! Contract point 1 (search_path), as an outside attacker: a role `hostile` with CREATE on
//! schema `public` plants functions, aggregates, operators, domains and views that shadow
//! what an implementation might call (`=`, `+`, `||`, `now()`, `to_jsonb`, `format`,
//! `nextval(text)`, `unnest`, `count`, `sum`, `lag`, casts to `int8`/`text` ...). Each one
//! records that it ran (a non-transactional sequence, a log table, a NOTICE) and tries to
//! escalate with the caller's rights (`ALTER ROLE hostile SUPERUSER`, `GRANT <caller> TO
//! hostile`). Then every function of the README is called on every path (first use, reuse,
//! replays, errors, triggers on user tables, claims full cycle, locks, purge), by the
//! superuser `postgres` and by an app role given `exactly.grant_usage('app')`, under the
//! default `"$user", public` and under `public, pg_catalog`.
//!
//! Pass: after every single step nothing hostile ran, `hostile` is not a superuser and is a
//! member of no role, and the step's results are right. A failure lists every offending
//! step as `<function: path> [as <caller>, search_path = <path>]: hostile code ran: <what
//! ran, as whom>` or `... wrong result: ...`.
//!
//! One cluster per test function; the caller's own statements qualify everything they use
//! (`OPERATOR(pg_catalog.=)`, `pg_catalog.` functions, no unqualified type names), and all
//! checks run on a separate connection whose search_path is `pg_catalog` alone, so anything
//! hostile that runs ran inside pg_exactly. `control_...` shows that the same scenario is
//! right on a clean search_path (so a "wrong result" is the hostile objects' doing) and
//! that the detector catches a function that does not pin its search_path.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::hostile;
use common::text::{col, describe, json, one, refused, run, same};
use common::{Client, Cluster, NoTls};

const DEFAULT_PATH: &str = "\"$user\", public";
const PUBLIC_FIRST: &str = "public, pg_catalog";

// ---------------------------------------------------------------------------------------
// small helpers: every statement goes through the simple query protocol, values as text
// ---------------------------------------------------------------------------------------

fn num(s: &str) -> f64 {
    s.parse().unwrap_or(f64::NAN)
}

fn same_num(what: &str, got: &str, want: f64) -> Result<(), String> {
    if (num(got) - want).abs() < 1e-9 {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, expected {want}"))
    }
}

fn json_i64(v: &serde_json::Value, key: &str) -> i64 {
    v.get(key).and_then(|x| x.as_i64()).unwrap_or(i64::MIN)
}

// ---------------------------------------------------------------------------------------
// the hostile role's objects
// ---------------------------------------------------------------------------------------

/// Shadowing functions: (name, argument types, return type, body expression over $1..).
/// A return type starting with "SETOF"/"TABLE" makes a set-returning shadow; "void" one
/// that performs its expression.
const SHADOW_FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    ("now", "", "timestamptz", "pg_catalog.now()"),
    (
        "clock_timestamp",
        "",
        "timestamptz",
        "pg_catalog.clock_timestamp()",
    ),
    (
        "statement_timestamp",
        "",
        "timestamptz",
        "pg_catalog.statement_timestamp()",
    ),
    (
        "transaction_timestamp",
        "",
        "timestamptz",
        "pg_catalog.transaction_timestamp()",
    ),
    ("timeofday", "", "text", "pg_catalog.timeofday()"),
    (
        "gen_random_uuid",
        "",
        "uuid",
        "pg_catalog.gen_random_uuid()",
    ),
    (
        "uuid_generate_v4",
        "",
        "uuid",
        "pg_catalog.gen_random_uuid()",
    ),
    ("random", "", "double precision", "pg_catalog.random()"),
    (
        "pg_backend_pid",
        "",
        "integer",
        "pg_catalog.pg_backend_pid()",
    ),
    ("txid_current", "", "bigint", "pg_catalog.txid_current()"),
    (
        "pg_current_xact_id",
        "",
        "xid8",
        "pg_catalog.pg_current_xact_id()",
    ),
    ("to_jsonb", "anyelement", "jsonb", "pg_catalog.to_jsonb($1)"),
    ("to_jsonb", "text", "jsonb", "pg_catalog.to_jsonb($1)"),
    ("to_jsonb", "bigint", "jsonb", "pg_catalog.to_jsonb($1)"),
    ("to_jsonb", "integer", "jsonb", "pg_catalog.to_jsonb($1)"),
    ("to_jsonb", "numeric", "jsonb", "pg_catalog.to_jsonb($1)"),
    ("to_jsonb", "uuid", "jsonb", "pg_catalog.to_jsonb($1)"),
    (
        "to_jsonb",
        "timestamptz",
        "jsonb",
        "pg_catalog.to_jsonb($1)",
    ),
    ("to_jsonb", "boolean", "jsonb", "pg_catalog.to_jsonb($1)"),
    ("to_json", "anyelement", "json", "pg_catalog.to_json($1)"),
    (
        "row_to_json",
        "record",
        "json",
        "pg_catalog.row_to_json($1)",
    ),
    (
        "jsonb_build_object",
        "text, text",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object",
        "text, bigint",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object",
        "text, integer",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object",
        "text, numeric",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object",
        "text, jsonb",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object",
        "text, uuid",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object",
        "text, boolean",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object",
        "text, timestamptz",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2)",
    ),
    (
        "jsonb_build_object",
        "text, text, text, text",
        "jsonb",
        "pg_catalog.jsonb_build_object($1, $2, $3, $4)",
    ),
    (
        "jsonb_build_array",
        "text",
        "jsonb",
        "pg_catalog.jsonb_build_array($1)",
    ),
    (
        "jsonb_build_array",
        "jsonb",
        "jsonb",
        "pg_catalog.jsonb_build_array($1)",
    ),
    (
        "jsonb_object",
        "text[]",
        "jsonb",
        "pg_catalog.jsonb_object($1)",
    ),
    (
        "jsonb_object",
        "text[], text[]",
        "jsonb",
        "pg_catalog.jsonb_object($1, $2)",
    ),
    (
        "jsonb_typeof",
        "jsonb",
        "text",
        "pg_catalog.jsonb_typeof($1)",
    ),
    (
        "jsonb_strip_nulls",
        "jsonb",
        "jsonb",
        "pg_catalog.jsonb_strip_nulls($1)",
    ),
    (
        "jsonb_set",
        "jsonb, text[], jsonb, boolean",
        "jsonb",
        "pg_catalog.jsonb_set($1, $2, $3, $4)",
    ),
    (
        "jsonb_extract_path",
        "jsonb, text",
        "jsonb",
        "pg_catalog.jsonb_extract_path($1, $2)",
    ),
    (
        "jsonb_extract_path_text",
        "jsonb, text",
        "text",
        "pg_catalog.jsonb_extract_path_text($1, $2)",
    ),
    (
        "jsonb_populate_record",
        "anyelement, jsonb",
        "anyelement",
        "pg_catalog.jsonb_populate_record($1, $2)",
    ),
    (
        "jsonb_populate_recordset",
        "anyelement, jsonb",
        "SETOF anyelement",
        "pg_catalog.jsonb_populate_recordset($1, $2)",
    ),
    (
        "jsonb_each",
        "jsonb",
        "TABLE(key text, value jsonb)",
        "pg_catalog.jsonb_each($1)",
    ),
    (
        "jsonb_each_text",
        "jsonb",
        "TABLE(key text, value text)",
        "pg_catalog.jsonb_each_text($1)",
    ),
    (
        "jsonb_object_keys",
        "jsonb",
        "SETOF text",
        "pg_catalog.jsonb_object_keys($1)",
    ),
    (
        "jsonb_array_elements",
        "jsonb",
        "SETOF jsonb",
        "pg_catalog.jsonb_array_elements($1)",
    ),
    (
        "jsonb_array_elements_text",
        "jsonb",
        "SETOF text",
        "pg_catalog.jsonb_array_elements_text($1)",
    ),
    ("format", "text", "text", "pg_catalog.format($1)"),
    ("format", "text, text", "text", "pg_catalog.format($1, $2)"),
    (
        "format",
        "text, text, text",
        "text",
        "pg_catalog.format($1, $2, $3)",
    ),
    (
        "format",
        "text, text, text, text",
        "text",
        "pg_catalog.format($1, $2, $3, $4)",
    ),
    (
        "format",
        "text, regclass",
        "text",
        "pg_catalog.format($1, $2)",
    ),
    (
        "format",
        "text, regclass, text",
        "text",
        "pg_catalog.format($1, $2, $3)",
    ),
    ("format", "text, name", "text", "pg_catalog.format($1, $2)"),
    (
        "format",
        "text, name, name",
        "text",
        "pg_catalog.format($1, $2, $3)",
    ),
    (
        "format",
        "text, bigint",
        "text",
        "pg_catalog.format($1, $2)",
    ),
    (
        "format",
        "text, integer",
        "text",
        "pg_catalog.format($1, $2)",
    ),
    ("format", "text, oid", "text", "pg_catalog.format($1, $2)"),
    (
        "format",
        "text, text, bigint",
        "text",
        "pg_catalog.format($1, $2, $3)",
    ),
    ("concat", "text, text", "text", "pg_catalog.concat($1, $2)"),
    (
        "concat",
        "text, text, text",
        "text",
        "pg_catalog.concat($1, $2, $3)",
    ),
    (
        "concat_ws",
        "text, text, text",
        "text",
        "pg_catalog.concat_ws($1, $2, $3)",
    ),
    ("quote_ident", "text", "text", "pg_catalog.quote_ident($1)"),
    ("quote_ident", "name", "text", "pg_catalog.quote_ident($1)"),
    (
        "quote_literal",
        "text",
        "text",
        "pg_catalog.quote_literal($1)",
    ),
    (
        "quote_literal",
        "anyelement",
        "text",
        "pg_catalog.quote_literal($1)",
    ),
    (
        "quote_nullable",
        "text",
        "text",
        "pg_catalog.quote_nullable($1)",
    ),
    (
        "quote_nullable",
        "anyelement",
        "text",
        "pg_catalog.quote_nullable($1)",
    ),
    (
        "nextval",
        "text",
        "bigint",
        "pg_catalog.nextval($1::pg_catalog.regclass)",
    ),
    (
        "currval",
        "text",
        "bigint",
        "pg_catalog.currval($1::pg_catalog.regclass)",
    ),
    (
        "setval",
        "text, bigint",
        "bigint",
        "pg_catalog.setval($1::pg_catalog.regclass, $2)",
    ),
    (
        "pg_get_serial_sequence",
        "text, name",
        "text",
        "pg_catalog.pg_get_serial_sequence($1, $2::pg_catalog.text)",
    ),
    (
        "pg_get_serial_sequence",
        "text, text",
        "text",
        "pg_catalog.pg_get_serial_sequence($1, $2)",
    ),
    (
        "pg_get_serial_sequence",
        "regclass, name",
        "text",
        "pg_catalog.pg_get_serial_sequence($1::pg_catalog.text, $2::pg_catalog.text)",
    ),
    ("lower", "text", "text", "pg_catalog.lower($1)"),
    ("upper", "text", "text", "pg_catalog.upper($1)"),
    ("lower", "name", "text", "pg_catalog.lower($1)"),
    ("upper", "name", "text", "pg_catalog.upper($1)"),
    ("lower", "character varying", "text", "pg_catalog.lower($1)"),
    ("length", "text", "integer", "pg_catalog.length($1)"),
    (
        "char_length",
        "text",
        "integer",
        "pg_catalog.char_length($1)",
    ),
    (
        "octet_length",
        "text",
        "integer",
        "pg_catalog.octet_length($1)",
    ),
    (
        "substr",
        "text, integer",
        "text",
        "pg_catalog.substr($1, $2)",
    ),
    (
        "substr",
        "text, integer, integer",
        "text",
        "pg_catalog.substr($1, $2, $3)",
    ),
    (
        "left",
        "text, integer",
        "text",
        "pg_catalog.\"left\"($1, $2)",
    ),
    (
        "right",
        "text, integer",
        "text",
        "pg_catalog.\"right\"($1, $2)",
    ),
    ("lpad", "text, integer", "text", "pg_catalog.lpad($1, $2)"),
    (
        "lpad",
        "text, integer, text",
        "text",
        "pg_catalog.lpad($1, $2, $3)",
    ),
    (
        "rpad",
        "text, integer, text",
        "text",
        "pg_catalog.rpad($1, $2, $3)",
    ),
    (
        "repeat",
        "text, integer",
        "text",
        "pg_catalog.repeat($1, $2)",
    ),
    (
        "replace",
        "text, text, text",
        "text",
        "pg_catalog.replace($1, $2, $3)",
    ),
    (
        "split_part",
        "text, text, integer",
        "text",
        "pg_catalog.split_part($1, $2, $3)",
    ),
    (
        "strpos",
        "text, text",
        "integer",
        "pg_catalog.strpos($1, $2)",
    ),
    ("md5", "text", "text", "pg_catalog.md5($1)"),
    ("encode", "bytea, text", "text", "pg_catalog.encode($1, $2)"),
    ("decode", "text, text", "bytea", "pg_catalog.decode($1, $2)"),
    ("hashtext", "text", "integer", "pg_catalog.hashtext($1)"),
    (
        "hashtextextended",
        "text, bigint",
        "bigint",
        "pg_catalog.hashtextextended($1, $2)",
    ),
    (
        "string_to_array",
        "text, text",
        "text[]",
        "pg_catalog.string_to_array($1, $2)",
    ),
    (
        "array_to_string",
        "text[], text",
        "text",
        "pg_catalog.array_to_string($1, $2)",
    ),
    (
        "array_to_string",
        "bigint[], text",
        "text",
        "pg_catalog.array_to_string($1, $2)",
    ),
    (
        "array_length",
        "anyarray, integer",
        "integer",
        "pg_catalog.array_length($1, $2)",
    ),
    (
        "array_length",
        "text[], integer",
        "integer",
        "pg_catalog.array_length($1, $2)",
    ),
    (
        "array_length",
        "bigint[], integer",
        "integer",
        "pg_catalog.array_length($1, $2)",
    ),
    (
        "array_length",
        "numeric[], integer",
        "integer",
        "pg_catalog.array_length($1, $2)",
    ),
    (
        "array_length",
        "uuid[], integer",
        "integer",
        "pg_catalog.array_length($1, $2)",
    ),
    (
        "array_upper",
        "anyarray, integer",
        "integer",
        "pg_catalog.array_upper($1, $2)",
    ),
    (
        "array_lower",
        "anyarray, integer",
        "integer",
        "pg_catalog.array_lower($1, $2)",
    ),
    (
        "array_ndims",
        "anyarray",
        "integer",
        "pg_catalog.array_ndims($1)",
    ),
    (
        "cardinality",
        "anyarray",
        "integer",
        "pg_catalog.cardinality($1)",
    ),
    (
        "cardinality",
        "text[]",
        "integer",
        "pg_catalog.cardinality($1)",
    ),
    (
        "cardinality",
        "bigint[]",
        "integer",
        "pg_catalog.cardinality($1)",
    ),
    (
        "cardinality",
        "numeric[]",
        "integer",
        "pg_catalog.cardinality($1)",
    ),
    (
        "array_position",
        "text[], text",
        "integer",
        "pg_catalog.array_position($1, $2)",
    ),
    (
        "array_append",
        "text[], text",
        "text[]",
        "pg_catalog.array_append($1, $2)",
    ),
    (
        "array_append",
        "bigint[], bigint",
        "bigint[]",
        "pg_catalog.array_append($1, $2)",
    ),
    (
        "array_cat",
        "text[], text[]",
        "text[]",
        "pg_catalog.array_cat($1, $2)",
    ),
    (
        "array_remove",
        "text[], text",
        "text[]",
        "pg_catalog.array_remove($1, $2)",
    ),
    (
        "unnest",
        "anyarray",
        "SETOF anyelement",
        "pg_catalog.unnest($1)",
    ),
    ("unnest", "text[]", "SETOF text", "pg_catalog.unnest($1)"),
    (
        "unnest",
        "bigint[]",
        "SETOF bigint",
        "pg_catalog.unnest($1)",
    ),
    (
        "unnest",
        "integer[]",
        "SETOF integer",
        "pg_catalog.unnest($1)",
    ),
    (
        "unnest",
        "numeric[]",
        "SETOF numeric",
        "pg_catalog.unnest($1)",
    ),
    ("unnest", "uuid[]", "SETOF uuid", "pg_catalog.unnest($1)"),
    ("unnest", "jsonb[]", "SETOF jsonb", "pg_catalog.unnest($1)"),
    (
        "generate_series",
        "integer, integer",
        "SETOF integer",
        "pg_catalog.generate_series($1, $2)",
    ),
    (
        "generate_series",
        "bigint, bigint",
        "SETOF bigint",
        "pg_catalog.generate_series($1, $2)",
    ),
    ("abs", "numeric", "numeric", "pg_catalog.abs($1)"),
    ("abs", "bigint", "bigint", "pg_catalog.abs($1)"),
    ("round", "numeric", "numeric", "pg_catalog.round($1)"),
    (
        "round",
        "numeric, integer",
        "numeric",
        "pg_catalog.round($1, $2)",
    ),
    ("trunc", "numeric", "numeric", "pg_catalog.trunc($1)"),
    ("scale", "numeric", "integer", "pg_catalog.scale($1)"),
    ("sign", "numeric", "numeric", "pg_catalog.sign($1)"),
    ("int8", "integer", "bigint", "pg_catalog.int8($1)"),
    ("int8", "numeric", "bigint", "pg_catalog.int8($1)"),
    ("int4", "bigint", "integer", "pg_catalog.int4($1)"),
    ("numeric", "bigint", "numeric", "pg_catalog.\"numeric\"($1)"),
    (
        "numeric",
        "integer",
        "numeric",
        "pg_catalog.\"numeric\"($1)",
    ),
    (
        "float8",
        "numeric",
        "double precision",
        "pg_catalog.float8($1)",
    ),
    ("text", "name", "text", "pg_catalog.text($1)"),
    ("text", "bigint", "text", "$1::pg_catalog.text"),
    ("text", "regclass", "text", "$1::pg_catalog.text"),
    ("regclass", "text", "regclass", "$1::pg_catalog.regclass"),
    (
        "to_regclass",
        "text",
        "regclass",
        "pg_catalog.to_regclass($1)",
    ),
    (
        "pg_advisory_xact_lock",
        "bigint",
        "void",
        "pg_catalog.pg_advisory_xact_lock($1)",
    ),
    (
        "pg_advisory_xact_lock",
        "integer, integer",
        "void",
        "pg_catalog.pg_advisory_xact_lock($1, $2)",
    ),
    (
        "pg_advisory_xact_lock_shared",
        "bigint",
        "void",
        "pg_catalog.pg_advisory_xact_lock_shared($1)",
    ),
    (
        "pg_try_advisory_xact_lock",
        "bigint",
        "boolean",
        "pg_catalog.pg_try_advisory_xact_lock($1)",
    ),
    (
        "pg_try_advisory_xact_lock",
        "integer, integer",
        "boolean",
        "pg_catalog.pg_try_advisory_xact_lock($1, $2)",
    ),
    (
        "pg_advisory_lock",
        "bigint",
        "void",
        "pg_catalog.pg_advisory_lock($1)",
    ),
    (
        "pg_try_advisory_lock",
        "bigint",
        "boolean",
        "pg_catalog.pg_try_advisory_lock($1)",
    ),
    (
        "pg_advisory_unlock",
        "bigint",
        "boolean",
        "pg_catalog.pg_advisory_unlock($1)",
    ),
    (
        "pg_sleep",
        "double precision",
        "void",
        "pg_catalog.pg_sleep($1)",
    ),
    (
        "pg_notify",
        "text, text",
        "void",
        "pg_catalog.pg_notify($1, $2)",
    ),
    (
        "set_config",
        "text, text, boolean",
        "text",
        "pg_catalog.set_config($1, $2, $3)",
    ),
    (
        "current_setting",
        "text",
        "text",
        "pg_catalog.current_setting($1)",
    ),
    (
        "current_setting",
        "text, boolean",
        "text",
        "pg_catalog.current_setting($1, $2)",
    ),
    (
        "date_trunc",
        "text, timestamptz",
        "timestamptz",
        "pg_catalog.date_trunc($1, $2)",
    ),
    (
        "date_part",
        "text, timestamptz",
        "double precision",
        "pg_catalog.date_part($1, $2)",
    ),
    ("age", "timestamptz", "interval", "pg_catalog.age($1)"),
    (
        "timezone",
        "text, timestamptz",
        "timestamp",
        "pg_catalog.timezone($1, $2)",
    ),
    (
        "to_char",
        "bigint, text",
        "text",
        "pg_catalog.to_char($1, $2)",
    ),
    (
        "to_char",
        "integer, text",
        "text",
        "pg_catalog.to_char($1, $2)",
    ),
    (
        "to_char",
        "numeric, text",
        "text",
        "pg_catalog.to_char($1, $2)",
    ),
    (
        "to_char",
        "timestamptz, text",
        "text",
        "pg_catalog.to_char($1, $2)",
    ),
    (
        "has_table_privilege",
        "text, text",
        "boolean",
        "pg_catalog.has_table_privilege($1, $2)",
    ),
    (
        "has_table_privilege",
        "oid, text",
        "boolean",
        "pg_catalog.has_table_privilege($1, $2)",
    ),
    (
        "has_column_privilege",
        "oid, text, text",
        "boolean",
        "pg_catalog.has_column_privilege($1, $2, $3)",
    ),
    (
        "pg_table_is_visible",
        "oid",
        "boolean",
        "pg_catalog.pg_table_is_visible($1)",
    ),
    (
        "format_type",
        "oid, integer",
        "text",
        "pg_catalog.format_type($1, $2)",
    ),
    (
        "pg_get_indexdef",
        "oid",
        "text",
        "pg_catalog.pg_get_indexdef($1)",
    ),
    (
        "pg_get_constraintdef",
        "oid",
        "text",
        "pg_catalog.pg_get_constraintdef($1)",
    ),
    (
        "pg_blocking_pids",
        "integer",
        "integer[]",
        "pg_catalog.pg_blocking_pids($1)",
    ),
];

/// Shadowing aggregates: (name, argument types, state type, state function body over
/// s (state) and v/w (inputs), initial condition, strict state function).
const SHADOW_AGGREGATES: &[(&str, &str, &str, &str, Option<&str>, bool)] = &[
    ("count", "*", "bigint", "s + 1", Some("0"), false),
    ("count", "text", "bigint", "s + 1", Some("0"), true),
    ("count", "bigint", "bigint", "s + 1", Some("0"), true),
    ("count", "integer", "bigint", "s + 1", Some("0"), true),
    ("count", "numeric", "bigint", "s + 1", Some("0"), true),
    ("count", "uuid", "bigint", "s + 1", Some("0"), true),
    ("count", "jsonb", "bigint", "s + 1", Some("0"), true),
    ("count", "regclass", "bigint", "s + 1", Some("0"), true),
    ("count", "tid", "bigint", "s + 1", Some("0"), true),
    ("count", "boolean", "bigint", "s + 1", Some("0"), true),
    ("count", "timestamptz", "bigint", "s + 1", Some("0"), true),
    (
        "sum",
        "numeric",
        "numeric",
        "CASE WHEN v IS NULL THEN s ELSE coalesce(s, 0) + v END",
        None,
        false,
    ),
    (
        "sum",
        "bigint",
        "numeric",
        "CASE WHEN v IS NULL THEN s ELSE coalesce(s, 0) + v END",
        None,
        false,
    ),
    (
        "sum",
        "integer",
        "bigint",
        "CASE WHEN v IS NULL THEN s ELSE coalesce(s, 0) + v END",
        None,
        false,
    ),
    (
        "max",
        "anyelement",
        "anyelement",
        "CASE WHEN v > s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "max",
        "bigint",
        "bigint",
        "CASE WHEN v > s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "max",
        "integer",
        "integer",
        "CASE WHEN v > s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "max",
        "numeric",
        "numeric",
        "CASE WHEN v > s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "max",
        "text",
        "text",
        "CASE WHEN v > s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "max",
        "timestamptz",
        "timestamptz",
        "CASE WHEN v > s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "min",
        "bigint",
        "bigint",
        "CASE WHEN v < s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "min",
        "numeric",
        "numeric",
        "CASE WHEN v < s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "min",
        "text",
        "text",
        "CASE WHEN v < s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "min",
        "timestamptz",
        "timestamptz",
        "CASE WHEN v < s THEN v ELSE s END",
        None,
        true,
    ),
    (
        "array_agg",
        "text",
        "text[]",
        "array_append(s, v)",
        None,
        false,
    ),
    (
        "array_agg",
        "bigint",
        "bigint[]",
        "array_append(s, v)",
        None,
        false,
    ),
    (
        "array_agg",
        "integer",
        "integer[]",
        "array_append(s, v)",
        None,
        false,
    ),
    (
        "array_agg",
        "numeric",
        "numeric[]",
        "array_append(s, v)",
        None,
        false,
    ),
    (
        "array_agg",
        "uuid",
        "uuid[]",
        "array_append(s, v)",
        None,
        false,
    ),
    (
        "array_agg",
        "jsonb",
        "jsonb[]",
        "array_append(s, v)",
        None,
        false,
    ),
    (
        "array_agg",
        "regclass",
        "regclass[]",
        "array_append(s, v)",
        None,
        false,
    ),
    (
        "array_agg",
        "tid",
        "tid[]",
        "array_append(s, v)",
        None,
        false,
    ),
    (
        "jsonb_agg",
        "jsonb",
        "jsonb",
        "coalesce(s, '[]'::jsonb) || jsonb_build_array(v)",
        None,
        false,
    ),
    (
        "jsonb_agg",
        "text",
        "jsonb",
        "coalesce(s, '[]'::jsonb) || jsonb_build_array(v)",
        None,
        false,
    ),
    (
        "jsonb_object_agg",
        "text, jsonb",
        "jsonb",
        "coalesce(s, '{}'::jsonb) || jsonb_build_object(v, w)",
        None,
        false,
    ),
    (
        "string_agg",
        "text, text",
        "text",
        "CASE WHEN v IS NULL THEN s WHEN s IS NULL THEN v ELSE s || w || v END",
        None,
        false,
    ),
    ("bool_and", "boolean", "boolean", "s AND v", None, true),
    ("bool_or", "boolean", "boolean", "s OR v", None, true),
    ("every", "boolean", "boolean", "s AND v", None, true),
    // aggregates used as window functions: `lag(x) OVER (...)` finds these
    ("lag", "numeric", "numeric", "v", None, false),
    ("lag", "bigint", "bigint", "v", None, false),
    ("lag", "text", "text", "v", None, false),
    ("lag", "numeric, integer", "numeric", "v", None, false),
    ("lead", "numeric", "numeric", "v", None, false),
    ("first_value", "numeric", "numeric", "v", None, false),
    ("last_value", "numeric", "numeric", "v", None, false),
];

/// Type names a statement may write unqualified (`::int8`, `::text`): under
/// `public, pg_catalog` these domains win, and their CHECK runs hostile code.
const SHADOW_DOMAINS: &[&str] = &[
    "text",
    "int8",
    "int4",
    "int2",
    "float8",
    "bool",
    "uuid",
    "jsonb",
    "json",
    "timestamptz",
    "date",
    "regclass",
    "regtype",
    "regproc",
    "oid",
    "name",
    "bytea",
    "tid",
    "xid8",
];

/// Relation names an implementation may write unqualified: pg_exactly's own tables (a
/// view that runs hostile code and returns nothing) and the catalogs it may read (a view
/// that returns the catalog's rows, and runs hostile code).
const STATE_TABLES: &[&str] = &[
    "invoice_sequences",
    "raffles",
    "tickets",
    "ticket_batches",
    "accounts",
    "payments",
    "table_balances",
    "claims",
    "claim_attempts",
];
const CATALOGS: &[&str] = &[
    "pg_locks",
    "pg_stat_activity",
    "pg_class",
    "pg_attribute",
    "pg_index",
    "pg_namespace",
    "pg_type",
    "pg_constraint",
    "pg_roles",
    "pg_proc",
    "pg_attrdef",
    "pg_depend",
    "pg_sequence",
    "pg_trigger",
    "pg_policy",
    "pg_inherits",
    "pg_settings",
    "pg_database",
    "pg_operator",
    "pg_extension",
    "pg_tables",
];

/// Operators shadowed for every pair of these types for which pg_catalog resolves the
/// operator (so each shadow returns the right answer, and only its log tells it ran).
const SHADOW_OPERATORS: &[&str] = &[
    "=", "<>", "<", "<=", ">", ">=", "+", "-", "*", "/", "%", "||", "->", "->>", "#>", "#>>", "@>",
    "<@", "?", "?|", "?&", "&&", "~~", "!~~", "~", "#-",
];
const OPERATOR_TYPES: &[&str] = &[
    "text",
    "character varying",
    "name",
    "\"char\"",
    "bigint",
    "integer",
    "smallint",
    "numeric",
    "double precision",
    "oid",
    "regclass",
    "regtype",
    "uuid",
    "timestamp with time zone",
    "timestamp without time zone",
    "date",
    "interval",
    "jsonb",
    "json",
    "boolean",
    "bytea",
    "tid",
    "xid8",
    "text[]",
    "bigint[]",
    "integer[]",
    "numeric[]",
    "uuid[]",
    "regclass[]",
    "name[]",
    "jsonb[]",
    "oid[]",
];

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Everything the hostile role creates, as one script run as `hostile`.
fn hostile_script() -> String {
    let mut sql = String::from(hostile::EVIDENCE);
    sql += r#"-- records that it ran (a sequence survives a rollback, a NOTICE reaches the client, the
-- log names it) and tries to escalate with the rights of whoever runs it
CREATE FUNCTION public.hostile_hit(what text) RETURNS boolean LANGUAGE plpgsql
SET search_path = pg_catalog AS $f$
DECLARE n int := coalesce(nullif(current_setting('hostile.calls', true), ''), '0')::int + 1;
BEGIN
  PERFORM nextval('public.hostile_hits');
  -- the first calls of a transaction do everything; later ones only count (speed)
  PERFORM set_config('hostile.calls', n::text, true);
  IF n > 20 THEN RETURN true; END IF;
  RAISE NOTICE 'HOSTILE CODE RAN: % (as %)', what, current_user;
  INSERT INTO public.hostile_log VALUES (what, current_user);
  BEGIN EXECUTE 'ALTER ROLE hostile SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN
    SET LOCAL client_min_messages = warning;
    EXECUTE 'GRANT ' || quote_ident(current_user) || ' TO hostile';
  EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN true;
END $f$;
"#;
    let mut n = 0;
    for (name, args, ret, body) in SHADOW_FUNCTIONS {
        n += 1;
        let label = quote_literal(&format!("function public.{name}({args})"));
        let params: Vec<String> = if args.is_empty() {
            vec![]
        } else {
            args.split(", ")
                .enumerate()
                .map(|(i, t)| format!("a{i} {t}"))
                .collect()
        };
        let body = if ret.starts_with("SETOF") || ret.starts_with("TABLE") {
            format!("RETURN QUERY SELECT * FROM {body}; RETURN;")
        } else if *ret == "void" {
            format!("PERFORM {body}; RETURN;")
        } else {
            format!("RETURN {body};")
        };
        sql += &format!(
            "CREATE FUNCTION public.{name}({params}) RETURNS {ret} LANGUAGE plpgsql VOLATILE \
             SET search_path = pg_catalog AS $b$ BEGIN PERFORM public.hostile_hit({label}); {body} END $b$;\n",
            params = params.join(", "),
        );
    }
    for (name, args, stype, expr, init, strict) in SHADOW_AGGREGATES {
        n += 1;
        let label = quote_literal(&format!("aggregate public.{name}({args})"));
        let inputs: Vec<&str> = if *args == "*" {
            vec![]
        } else {
            args.split(", ").collect()
        };
        let mut params = vec![format!("s {stype}")];
        for (i, t) in inputs.iter().enumerate() {
            params.push(format!("{} {t}", ["v", "w"][i]));
        }
        sql += &format!(
            "CREATE FUNCTION public.hostile_sfunc_{n}({params}) RETURNS {stype} LANGUAGE plpgsql {strict} \
             SET search_path = pg_catalog AS $b$ BEGIN PERFORM public.hostile_hit({label}); RETURN {expr}; END $b$;\n\
             CREATE AGGREGATE public.{name}({args}) (SFUNC = public.hostile_sfunc_{n}, STYPE = {stype}{init});\n",
            params = params.join(", "),
            strict = if *strict { "STRICT" } else { "" },
            init = init.map(|i| format!(", INITCOND = '{i}'")).unwrap_or_default(),
        );
    }
    for table in STATE_TABLES {
        sql += &format!(
            "CREATE VIEW public.{table} AS SELECT NULL::pg_catalog.text AS hostile \
             WHERE public.hostile_hit('view public.{table}');\n\
             GRANT SELECT ON public.{table} TO PUBLIC;\n"
        );
    }
    sql += &format!(
        r#"
DO $do$
DECLARE c text; cols text;
BEGIN
  FOREACH c IN ARRAY ARRAY[{catalogs}] LOOP
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols FROM pg_attribute
     WHERE attrelid = ('pg_catalog.' || c)::regclass AND attnum > 0 AND NOT attisdropped
       AND atttypid <> 'anyarray'::regtype;
    EXECUTE format('CREATE VIEW public.%I AS SELECT %s FROM pg_catalog.%I WHERE (SELECT public.hostile_hit(%L))',
                   c, cols, c, 'view public.' || c);
    EXECUTE format('GRANT SELECT ON public.%I TO PUBLIC', c);
  END LOOP;
END $do$;
"#,
        catalogs = CATALOGS
            .iter()
            .map(|t| quote_literal(t))
            .collect::<Vec<_>>()
            .join(", "),
    );
    // operators: every pair pg_catalog resolves, plus prefix minus
    sql += &hostile::operators_sql(
        SHADOW_OPERATORS,
        OPERATOR_TYPES,
        &[
            "numeric",
            "bigint",
            "integer",
            "interval",
            "double precision",
        ],
        500,
    );
    // domains last: they would shadow the types above if this script's path had public
    for domain in SHADOW_DOMAINS {
        sql += &format!(
            "CREATE DOMAIN public.{domain} AS pg_catalog.{domain} \
             CHECK (public.hostile_hit('domain public.{domain}'));\n"
        );
    }
    sql += "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC;\n";
    sql
}

/// Create `hostile` and its objects.
fn plant_hostile_objects(cluster: &Cluster) {
    let mut admin = cluster.connect();
    admin
        .batch_execute(
            "SET search_path = pg_catalog;
             CREATE ROLE hostile LOGIN;
             GRANT CREATE ON SCHEMA public TO hostile;",
        )
        .unwrap();
    cluster
        .connect_as("hostile")
        .batch_execute(&hostile_script())
        .unwrap_or_else(|e| panic!("planting the hostile objects: {}", describe(&e)));
}

// ---------------------------------------------------------------------------------------
// the attack run: a caller on a search_path, a clean checker, a fault list
// ---------------------------------------------------------------------------------------

struct Attack {
    label: String,
    /// how to connect the caller again (with its search_path) after its backend died
    reconnect: Option<(postgres::Config, String, postgres::Config)>,
    /// the cluster's server log, to quote when a backend dies
    server_log: std::path::PathBuf,
    caller: Client,
    notices: Arc<Mutex<Vec<String>>>,
    check: Client,
    hits_seen: i64,
    faults: Vec<String>,
}

impl Attack {
    fn new(cluster: &Cluster, role: &str, search_path: &str) -> Attack {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let mut config = cluster.config_as(role);
        config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
        let mut caller = config.connect(NoTls).unwrap();
        caller
            .batch_execute(&format!("SET search_path = {search_path}"))
            .unwrap();
        let mut check = cluster.connect();
        check.batch_execute("SET search_path = pg_catalog").unwrap();
        Attack {
            label: format!("as {role}, search_path = {search_path}"),
            reconnect: Some((config, search_path.to_string(), cluster.config())),
            server_log: cluster.dir().join("server.log"),
            caller,
            notices,
            check,
            hits_seen: 0,
            faults: Vec::new(),
        }
    }

    /// Run one step as the caller; then look for anything hostile having run.
    fn step(&mut self, what: &str, f: impl FnOnce(&mut Client, &mut Client) -> Result<(), String>) {
        let started = std::time::Instant::now();
        let result = f(&mut self.caller, &mut self.check);
        if started.elapsed() > Duration::from_secs(2) {
            eprintln!("slow step {what} [{}]: {:?}", self.label, started.elapsed());
        }
        if result.is_err() {
            let _ = self.caller.batch_execute("ROLLBACK");
        }
        if self.caller.is_closed()
            || self.check.is_closed()
            || self.caller.batch_execute("SELECT 1").is_err()
        {
            let log = std::fs::read_to_string(&self.server_log).unwrap_or_default();
            let why: Vec<&str> = log
                .lines()
                .filter(|l| {
                    [
                        "terminated by signal",
                        "PANIC",
                        "TRAP",
                        "FATAL",
                        "server process",
                    ]
                    .iter()
                    .any(|w| l.contains(w))
                })
                .collect();
            self.faults.push(format!(
                "{what} [{}]: the caller's backend died (connection lost); server log: {}",
                self.label,
                why.join(" | ")
            ));
            self.connect_again();
        }
        let evidence = self.hostile_evidence();
        if !evidence.is_empty() {
            self.faults.push(format!(
                "{what} [{}]: hostile code ran: {evidence}",
                self.label
            ));
        }
        if let Err(e) = result {
            self.faults
                .push(format!("{what} [{}]: wrong result: {e}", self.label));
        }
    }

    /// After a backend (or the server) died: connect the caller and the checker again.
    fn connect_again(&mut self) {
        let (caller_config, search_path, check_config) = self.reconnect.clone().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let connected = caller_config.connect(NoTls).and_then(|mut caller| {
                caller.batch_execute(&format!("SET search_path = {search_path}"))?;
                let mut check = check_config.connect(NoTls)?;
                check.batch_execute("SET search_path = pg_catalog")?;
                Ok((caller, check))
            });
            match connected {
                Ok((caller, check)) => {
                    self.caller = caller;
                    self.check = check;
                    return;
                }
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("cannot connect again: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// A fault found outside any step (setup).
    fn fault(&mut self, what: &str, e: String) {
        self.faults.push(format!("{what} [{}]: {e}", self.label));
    }

    /// What shows hostile code ran since the last look (and undoes its escalation).
    fn hostile_evidence(&mut self) -> String {
        let mut evidence = Vec::new();
        let mut notices: Vec<String> = std::mem::take(&mut *self.notices.lock().unwrap())
            .into_iter()
            .filter(|n| n.contains("HOSTILE CODE RAN"))
            .map(|n| n.replace("HOSTILE CODE RAN: ", ""))
            .collect();
        notices.sort();
        notices.dedup();
        let row = self
            .check
            .query_one(
                "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.hostile_hits),
                        (SELECT string_agg(DISTINCT what || ' as ' || by_user, '; ') FROM public.hostile_log),
                        (SELECT rolsuper FROM pg_roles WHERE rolname = 'hostile'),
                        (SELECT string_agg(m.roleid::regrole::text, ', ') FROM pg_auth_members m
                          WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = 'hostile'))",
                &[],
            )
            .unwrap();
        let hits: i64 = row.get(0);
        let logged: Option<String> = row.get(1);
        let superuser: bool = row.get(2);
        let member_of: Option<String> = row.get(3);
        if hits != self.hits_seen {
            evidence.push(format!("{} hostile calls", hits - self.hits_seen));
            self.hits_seen = hits;
        }
        if !notices.is_empty() {
            evidence.push(format!("notices [{}]", notices.join("; ")));
        }
        if let Some(logged) = logged {
            evidence.push(format!("committed log [{logged}]"));
        }
        if superuser {
            evidence.push("HOSTILE BECAME SUPERUSER".into());
        }
        if let Some(member_of) = &member_of {
            evidence.push(format!("HOSTILE WAS GRANTED {member_of}"));
        }
        if !evidence.is_empty() {
            self.check
                .batch_execute(&format!(
                    "TRUNCATE public.hostile_log; ALTER ROLE hostile NOSUPERUSER;{}",
                    member_of
                        .map(|m| format!(" REVOKE {m} FROM hostile;"))
                        .unwrap_or_default()
                ))
                .unwrap();
        }
        evidence.join(", ")
    }

    fn finish(self) {
        assert!(
            self.faults.is_empty(),
            "{} fault(s):\n{}",
            self.faults.len(),
            self.faults.join("\n")
        );
    }
}

/// The roles and the caller's own tables. The caller owns schema `shop` and creates its
/// tables there on a clean search_path (defaults and checks bind to pg_catalog's objects).
fn setup(cluster: &Cluster, caller: &str, attack: &mut Attack) {
    let mut admin = cluster.connect();
    admin
        .batch_execute(&format!(
            "SET search_path = pg_catalog;
             CREATE ROLE reader LOGIN;
             {}
             CREATE SCHEMA shop AUTHORIZATION {caller};",
            if caller == "postgres" {
                ""
            } else {
                "CREATE ROLE app LOGIN;"
            }
        ))
        .unwrap();
    if caller != "postgres" {
        if let Err(e) = admin.batch_execute(&format!("SELECT exactly.grant_usage('{caller}')")) {
            attack.fault(
                "setup: SELECT exactly.grant_usage('app')",
                format!("{}; used the README's 0.2.0 grants instead", describe(&e)),
            );
            admin
                .batch_execute(&format!(
                    "GRANT USAGE ON SCHEMA exactly TO {caller};
                     GRANT SELECT, INSERT, UPDATE ON exactly.invoice_sequences TO {caller};
                     GRANT SELECT, INSERT, UPDATE ON exactly.raffles, exactly.tickets, exactly.ticket_batches TO {caller};
                     GRANT SELECT, INSERT, UPDATE ON exactly.accounts, exactly.payments, exactly.table_balances TO {caller};
                     GRANT SELECT, INSERT, UPDATE, DELETE ON exactly.claims, exactly.claim_attempts TO {caller};
                     GRANT USAGE ON ALL SEQUENCES IN SCHEMA exactly TO {caller};"
                ))
                .unwrap();
        }
    }
    let mut owner = cluster.connect_as(caller);
    owner
        .batch_execute(
            "SET search_path = pg_catalog;
             CREATE TABLE shop.invoices (id bigserial PRIMARY KEY, tenant text, number text, amount numeric);
             CREATE TRIGGER invoice_number BEFORE INSERT ON shop.invoices FOR EACH ROW
                 EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'number');
             CREATE TABLE shop.invoices_int (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 tenant_id int NOT NULL, number varchar(20));
             CREATE TRIGGER invoice_number BEFORE INSERT ON shop.invoices_int FOR EACH ROW
                 EXECUTE FUNCTION exactly.assign_invoice_number('tenant_id', 'number');
             CREATE TABLE shop.invoices_short (id serial PRIMARY KEY, tenant text, number varchar(3));
             CREATE TRIGGER invoice_number BEFORE INSERT ON shop.invoices_short FOR EACH ROW
                 EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'number');
             CREATE TABLE shop.invoices_after (id serial PRIMARY KEY, tenant text, number text);
             CREATE TRIGGER invoice_number AFTER INSERT ON shop.invoices_after FOR EACH ROW
                 EXECUTE FUNCTION exactly.assign_invoice_number('tenant', 'number');
             CREATE TABLE shop.entries (id bigserial PRIMARY KEY, account text NOT NULL,
                 amount numeric NOT NULL, running_balance numeric, note text);
             CREATE TRIGGER ledger BEFORE INSERT OR UPDATE OR DELETE ON shop.entries FOR EACH ROW
                 EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'running_balance', 'account');
             CREATE TABLE shop.single_ledger (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                 amount numeric NOT NULL, balance numeric);
             CREATE TRIGGER ledger BEFORE INSERT OR UPDATE OR DELETE ON shop.single_ledger FOR EACH ROW
                 EXECUTE FUNCTION exactly.maintain_running_balance('amount', 'balance');
             CREATE TABLE shop.counters (id bigserial PRIMARY KEY, key text NOT NULL UNIQUE,
                 value int NOT NULL DEFAULT 0, label text, created_at timestamptz DEFAULT now());
             CREATE TABLE shop.pairs (tenant int, sku text, qty numeric DEFAULT 0,
                 uid uuid DEFAULT gen_random_uuid(), PRIMARY KEY (tenant, sku));
             CREATE TABLE shop.jobs (id bigint PRIMARY KEY, payload text, done_at timestamptz);
             CREATE INDEX ON shop.jobs (id) WHERE done_at IS NULL;
             INSERT INTO shop.jobs SELECT g, 'job ' || g FROM generate_series(1, 20) g;
             CREATE TABLE shop.tasks (code text PRIMARY KEY, finished date);
             INSERT INTO shop.tasks VALUES ('a', NULL), ('b', NULL), ('c', NULL);
             CREATE TABLE shop.nopk (x int, done_at timestamptz);",
        )
        .unwrap();
}

/// Ids (the "id" of each `data`) and the single claim of a claim_batch result.
fn claimed(c: &mut Client, sql: &str, key: &str) -> Result<(String, Vec<String>), String> {
    let rows = run(c, sql)?;
    let mut claim = String::new();
    let mut keys = Vec::new();
    for row in rows {
        let this = row[0].clone().unwrap_or_default();
        if !claim.is_empty() && claim != this {
            return Err(format!("`{sql}` returned two claims {claim} and {this}"));
        }
        claim = this;
        let data = json(row[1].as_deref().unwrap_or("null"))?;
        keys.push(match data.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "?".into(),
        });
    }
    Ok((claim, keys))
}

fn range(from: i64, to: i64) -> Vec<String> {
    (from..=to).map(|i| i.to_string()).collect()
}

/// Every function of the README on every path, with its results checked.
fn scenario(cluster: &Cluster, a: &mut Attack, superuser: bool) {
    // ---------------- invoice numbers ----------------
    a.step("define_invoice_sequence: create a tenant", |c, k| {
        run(c, "SELECT exactly.define_invoice_sequence(tenant => 'eu', prefix => 'EU', width => 4)")?;
        same(
            "invoice_sequences row",
            run(k, "SELECT prefix, width::text, next_value::text FROM exactly.invoice_sequences WHERE tenant = 'eu'")?,
            vec![vec![Some("EU".into()), Some("4".into()), Some("1".into())]],
        )
    });
    a.step(
        "next_invoice_number: first draw of a defined tenant",
        |c, _| {
            same(
                "number",
                one(c, "SELECT exactly.next_invoice_number('eu')")?,
                "EU-0001".into(),
            )
        },
    );
    a.step("next_invoice_number: reuse", |c, _| {
        same(
            "number",
            one(c, "SELECT exactly.next_invoice_number(tenant => 'eu')")?,
            "EU-0002".into(),
        )
    });
    a.step("define_invoice_sequence: reconfigure", |c, k| {
        run(c, "SELECT exactly.define_invoice_sequence('eu', 'EU', 6)")?;
        same(
            "invoice_sequences row",
            run(k, "SELECT prefix, width::text, next_value::text FROM exactly.invoice_sequences WHERE tenant = 'eu'")?,
            vec![vec![Some("EU".into()), Some("6".into()), Some("3".into())]],
        )?;
        same("number", one(c, "SELECT exactly.next_invoice_number('eu')")?, "EU-000003".into())
    });
    a.step(
        "next_invoice_number: tenant created on first use",
        |c, _| {
            same(
                "number",
                one(c, "SELECT exactly.next_invoice_number('us')")?,
                "us-00000001".into(),
            )
        },
    );
    a.step(
        "next_invoice_numbers: block of an existing tenant",
        |c, _| {
            same(
                "numbers",
                col(c, "SELECT * FROM exactly.next_invoice_numbers('eu', 3)")?,
                vec!["EU-000004".into(), "EU-000005".into(), "EU-000006".into()],
            )
        },
    );
    a.step(
        "next_invoice_numbers: tenant created on first use",
        |c, _| {
            same(
                "numbers",
                col(
                    c,
                    "SELECT * FROM exactly.next_invoice_numbers(tenant => 'apac', n => 2)",
                )?,
                vec!["apac-00000001".into(), "apac-00000002".into()],
            )
        },
    );
    a.step(
        "next_invoice_number: a rolled-back number is drawn again",
        |c, _| {
            c.batch_execute("BEGIN").map_err(|e| describe(&e))?;
            let first = one(c, "SELECT exactly.next_invoice_number('eu')")?;
            c.batch_execute("ROLLBACK").map_err(|e| describe(&e))?;
            same("rolled back", first, "EU-000007".into())?;
            same(
                "drawn again",
                one(c, "SELECT exactly.next_invoice_number('eu')")?,
                "EU-000007".into(),
            )
        },
    );
    a.step(
        "next_invoice_numbers: numbers wider than the width",
        |c, _| {
            run(c, "SELECT exactly.define_invoice_sequence('w', 'W', 1)")?;
            let numbers = col(c, "SELECT * FROM exactly.next_invoice_numbers('w', 11)")?;
            same(
                "first and last",
                (
                    numbers.first().cloned(),
                    numbers.last().cloned(),
                    numbers.len(),
                ),
                (Some("W-1".into()), Some("W-11".into()), 11),
            )
        },
    );
    a.step("next_invoice_number/numbers, define_invoice_sequence: bad input", |c, k| {
        refused(c, "SELECT exactly.next_invoice_number('')", "22023")?;
        refused(c, "SELECT exactly.next_invoice_number(NULL)", "22004")?;
        refused(c, "SELECT * FROM exactly.next_invoice_numbers('eu', 0)", "22023")?;
        refused(c, "SELECT * FROM exactly.next_invoice_numbers('eu', 1000001)", "22023")?;
        refused(c, "SELECT exactly.define_invoice_sequence('x', 'X', 0)", "22023")?;
        refused(c, "SELECT exactly.define_invoice_sequence('x', 'X', 20)", "22023")?;
        same(
            "state after refusals",
            col(k, "SELECT tenant || ':' || next_value FROM exactly.invoice_sequences WHERE tenant IN ('', 'x', 'eu') ORDER BY 1")?,
            vec!["eu:8".into()],
        )
    });
    a.step("next_invoice_number: counter at the bigint maximum (22003)", |c, k| {
        run(c, "SELECT exactly.define_invoice_sequence('big', 'B', 1)")?;
        run(k, "UPDATE exactly.invoice_sequences SET next_value = 9223372036854775806 WHERE tenant = 'big'")?;
        same("last number", one(c, "SELECT exactly.next_invoice_number('big')")?, "B-9223372036854775806".into())?;
        refused(c, "SELECT exactly.next_invoice_number('big')", "22003")
    });
    a.step("assign_invoice_number trigger: insert on a serial-key table", |c, _| {
        same(
            "number",
            one(c, "INSERT INTO shop.invoices (tenant, amount) VALUES ('eu', '10') RETURNING number")?,
            "EU-000008".into(),
        )
    });
    a.step("assign_invoice_number trigger: a given number is kept and draws nothing", |c, k| {
        same(
            "number",
            one(c, "INSERT INTO shop.invoices (tenant, number, amount) VALUES ('eu', 'manual-1', '1') RETURNING number")?,
            "manual-1".into(),
        )?;
        same("next_value", one(k, "SELECT next_value::text FROM exactly.invoice_sequences WHERE tenant = 'eu'")?, "9".into())
    });
    a.step("assign_invoice_number trigger: multi-row insert, new tenant", |c, _| {
        same(
            "numbers",
            col(c, "INSERT INTO shop.invoices (tenant, amount) VALUES ('eu', '1'), ('trig', '2'), ('eu', '3') RETURNING number")?,
            vec!["EU-000009".into(), "trig-00000001".into(), "EU-000010".into()],
        )
    });
    a.step(
        "assign_invoice_number trigger: integer tenant column, varchar number",
        |c, _| {
            same(
                "first",
                one(
                    c,
                    "INSERT INTO shop.invoices_int (tenant_id) VALUES (42) RETURNING number",
                )?,
                "42-00000001".into(),
            )?;
            same(
                "second",
                one(
                    c,
                    "INSERT INTO shop.invoices_int (tenant_id) VALUES (42) RETURNING number",
                )?,
                "42-00000002".into(),
            )
        },
    );
    a.step("assign_invoice_number trigger: errors", |c, k| {
        refused(
            c,
            "INSERT INTO shop.invoices (tenant) VALUES (NULL)",
            "22004",
        )?;
        refused(
            c,
            "INSERT INTO shop.invoices_short (tenant) VALUES ('eu')",
            "22001",
        )?;
        refused(
            c,
            "INSERT INTO shop.invoices_after (tenant) VALUES ('eu')",
            "39P01",
        )?;
        same(
            "next_value",
            one(
                k,
                "SELECT next_value::text FROM exactly.invoice_sequences WHERE tenant = 'eu'",
            )?,
            "11".into(),
        )
    });

    // ---------------- raffle tickets ----------------
    let mut raffle = String::new();
    let mut raffle2 = String::new();
    a.step("raffles: insert a raffle (tickets_requested, code_length)", |c, _| {
        raffle = one(c, "INSERT INTO exactly.raffles (tickets_requested, code_length) VALUES (10, 8) RETURNING id")?;
        raffle2 = one(c, "INSERT INTO exactly.raffles (tickets_requested) VALUES (5) RETURNING id")?;
        Ok(())
    });
    let r = raffle.clone();
    let r2 = raffle2.clone();
    a.step("batch_create_tickets: first use of a batch key", |c, _| {
        same(
            "created",
            one(
                c,
                &format!("SELECT exactly.batch_create_tickets({r}, 4, 'b1')"),
            )?,
            "4".into(),
        )
    });
    a.step("batch_create_tickets: replay of a batch key", |c, k| {
        same(
            "replayed",
            one(
                c,
                &format!(
                    "SELECT exactly.batch_create_tickets(raffle => {r}, n => 4, batch_key => 'b1')"
                ),
            )?,
            "4".into(),
        )?;
        same(
            "tickets",
            one(
                k,
                &format!("SELECT count(*)::text FROM exactly.tickets WHERE raffle_id = {r}"),
            )?,
            "4".into(),
        )
    });
    a.step(
        "batch_create_tickets: a batch key reused with other arguments",
        |c, _| {
            refused(
                c,
                &format!("SELECT exactly.batch_create_tickets({r}, 5, 'b1')"),
                "22023",
            )?;
            refused(
                c,
                &format!("SELECT exactly.batch_create_tickets({r2}, 4, 'b1')"),
                "22023",
            )
        },
    );
    a.step("batch_create_tickets: without a key", |c, _| {
        same(
            "created",
            one(c, &format!("SELECT exactly.batch_create_tickets({r}, 3)"))?,
            "3".into(),
        )?;
        same(
            "other raffle",
            one(c, &format!("SELECT exactly.batch_create_tickets({r2}, 5)"))?,
            "5".into(),
        )
    });
    a.step(
        "batch_create_tickets: capped at tickets_requested",
        |c, _| {
            same(
                "capped",
                one(
                    c,
                    &format!("SELECT exactly.batch_create_tickets({r}, 5, 'b2')"),
                )?,
                "3".into(),
            )?;
            same(
                "full",
                one(c, &format!("SELECT exactly.batch_create_tickets({r}, 5)"))?,
                "0".into(),
            )?;
            same(
                "n = 0",
                one(c, &format!("SELECT exactly.batch_create_tickets({r}, 0)"))?,
                "0".into(),
            )
        },
    );
    a.step("batch_create_tickets: errors", |c, _| {
        refused(c, "SELECT exactly.batch_create_tickets(999999, 1)", "P0002")?;
        refused(
            c,
            &format!("SELECT exactly.batch_create_tickets({r}, -1)"),
            "22023",
        )?;
        refused(
            c,
            &format!("SELECT exactly.batch_create_tickets({r}, 1000001)"),
            "22023",
        )?;
        refused(c, "SELECT exactly.batch_create_tickets(NULL, 1)", "22004")
    });
    a.step("batch_create_tickets: the tickets", |_, k| {
        same(
            "tickets of the raffles",
            run(k, &format!(
                "SELECT r.id::text, r.tickets_created::text, count(t.id)::text, count(DISTINCT t.code)::text,
                        bool_and(t.code ~ ('^[0-9A-F]{{' || r.code_length || '}}$'))::text
                 FROM exactly.raffles r LEFT JOIN exactly.tickets t ON t.raffle_id = r.id
                 WHERE r.id IN ({r}, {r2}) GROUP BY r.id, r.tickets_created, r.code_length ORDER BY r.id"))?,
            vec![
                vec![Some(r.clone()), Some("10".into()), Some("10".into()), Some("10".into()), Some("true".into())],
                vec![Some(r2.clone()), Some("5".into()), Some("5".into()), Some("5".into()), Some("true".into())],
            ],
        )
    });
    a.step(
        "purge_ticket_batches: nothing old enough, then every key",
        |c, k| {
            same(
                "purged (1 day)",
                one(c, "SELECT exactly.purge_ticket_batches('1 day')")?,
                "0".into(),
            )?;
            same(
                "purged (0)",
                one(
                    c,
                    "SELECT exactly.purge_ticket_batches(older_than => '0 seconds')",
                )?,
                "2".into(),
            )?;
            same(
                "keys left",
                one(k, "SELECT count(*)::text FROM exactly.ticket_batches")?,
                "0".into(),
            )?;
            same(
                "replay after purge",
                one(
                    c,
                    &format!("SELECT exactly.batch_create_tickets({r}, 4, 'b1')"),
                )?,
                "0".into(),
            )
        },
    );

    // ---------------- payments ledger ----------------
    a.step("accounts: insert an account with min_balance", |c, _| {
        run(
            c,
            "INSERT INTO exactly.accounts (account, min_balance) VALUES ('alice', 0)",
        )
        .map(|_| ())
    });
    a.step("append_payment(amount): the default account, first use and reuse", |c, _| {
        same("first", run(c, "SELECT account, running_balance::pg_catalog.text FROM exactly.append_payment(100)")?,
             vec![vec![Some("default".into()), Some("100".into())]])?;
        same("second", run(c, "SELECT account, running_balance::pg_catalog.text FROM exactly.append_payment(amount => 1)")?,
             vec![vec![Some("default".into()), Some("101".into())]])
    });
    let mut charge = String::new();
    a.step("append_payment: first use of an idempotency key", |c, _| {
        let row = run(c, "SELECT id::pg_catalog.text, running_balance::pg_catalog.text FROM exactly.append_payment('alice', 50, idempotency_key => 'charge-1')")?;
        charge = row.first().and_then(|r| r[0].clone()).unwrap_or_default();
        same_num("running_balance", row.first().and_then(|r| r[1].as_deref()).unwrap_or(""), 50.0)
    });
    let id = charge.clone();
    a.step("append_payment: replay of an idempotency key", |c, k| {
        same(
            "replayed entry",
            one(
                c,
                "SELECT id::pg_catalog.text FROM exactly.append_payment('alice', 50, 'charge-1')",
            )?,
            id.clone(),
        )?;
        same(
            "alice's entries",
            one(
                k,
                "SELECT count(*)::text FROM exactly.payments WHERE account = 'alice'",
            )?,
            "1".into(),
        )
    });
    a.step(
        "append_payment: idempotency key reused with other arguments",
        |c, _| {
            refused(
                c,
                "SELECT * FROM exactly.append_payment('alice', 51, 'charge-1')",
                "22023",
            )?;
            refused(
                c,
                "SELECT * FROM exactly.append_payment('bob', 50, 'charge-1')",
                "22023",
            )
        },
    );
    a.step("append_payment: below min_balance (23514), then a withdrawal", |c, k| {
        refused(c, "SELECT * FROM exactly.append_payment('alice', '-80')", "23514")?;
        same("alice", one(k, "SELECT balance || '/' || entries FROM exactly.accounts WHERE account = 'alice'")?, "50/1".into())?;
        same_num("withdrawal", &one(c, "SELECT running_balance::pg_catalog.text FROM exactly.append_payment('alice', '-20')")?, 30.0)
    });
    a.step("append_payment: refusal caught in a savepoint", |c, _| {
        c.batch_execute("BEGIN; SAVEPOINT s")
            .map_err(|e| describe(&e))?;
        refused(
            c,
            "SELECT * FROM exactly.append_payment('alice', '-100')",
            "23514",
        )?;
        c.batch_execute("ROLLBACK TO SAVEPOINT s")
            .map_err(|e| describe(&e))?;
        let rb = one(
            c,
            "SELECT running_balance::pg_catalog.text FROM exactly.append_payment('alice', 5)",
        )?;
        c.batch_execute("COMMIT").map_err(|e| describe(&e))?;
        same_num("after the savepoint", &rb, 35.0)
    });
    a.step("append_payment: a new account on first use", |c, _| {
        same_num(
            "bob",
            &one(
                c,
                "SELECT running_balance::pg_catalog.text FROM exactly.append_payment('bob', 7)",
            )?,
            7.0,
        )
    });
    a.step("append_payments: a new account, then an existing one", |c, _| {
        let carol = col(c, "SELECT running_balance::pg_catalog.text FROM exactly.append_payments('carol', '{10,20,-5}')")?;
        same("carol", carol.iter().map(|s| num(s)).collect::<Vec<_>>(), vec![10.0, 30.0, 25.0])?;
        let alice = col(c, "SELECT running_balance::pg_catalog.text FROM exactly.append_payments(account => 'alice', amounts => '{1,2}')")?;
        same("alice", alice.iter().map(|s| num(s)).collect::<Vec<_>>(), vec![36.0, 38.0])
    });
    a.step("append_payment(s): errors", |c, k| {
        refused(
            c,
            "SELECT * FROM exactly.append_payments('alice', '{-100}')",
            "23514",
        )?;
        refused(
            c,
            "SELECT * FROM exactly.append_payments('alice', '{}')",
            "22023",
        )?;
        refused(
            c,
            "SELECT * FROM exactly.append_payments('alice', '{1,NULL}')",
            "22004",
        )?;
        refused(
            c,
            "SELECT * FROM exactly.append_payment('alice', 'NaN')",
            "22023",
        )?;
        refused(c, "SELECT * FROM exactly.append_payment('', 1)", "22023")?;
        refused(c, "SELECT * FROM exactly.append_payment(NULL, 1)", "22004")?;
        same(
            "alice",
            one(
                k,
                "SELECT balance || '/' || entries FROM exactly.accounts WHERE account = 'alice'",
            )?,
            "38/5".into(),
        )
    });
    a.step(
        "append_payment: two accounts in one transaction, both orders",
        |c, _| {
            c.batch_execute("BEGIN").map_err(|e| describe(&e))?;
            let a1 = one(
                c,
                "SELECT running_balance::pg_catalog.text FROM exactly.append_payment('alice', 1)",
            )?;
            let b1 = one(
                c,
                "SELECT running_balance::pg_catalog.text FROM exactly.append_payment('bob', 1)",
            )?;
            c.batch_execute("COMMIT; BEGIN").map_err(|e| describe(&e))?;
            let b2 = one(
                c,
                "SELECT running_balance::pg_catalog.text FROM exactly.append_payment('bob', 1)",
            )?;
            let a2 = one(
                c,
                "SELECT running_balance::pg_catalog.text FROM exactly.append_payment('alice', 1)",
            )?;
            c.batch_execute("COMMIT").map_err(|e| describe(&e))?;
            same(
                "balances",
                [num(&a1), num(&b1), num(&b2), num(&a2)],
                [39.0, 8.0, 9.0, 40.0],
            )
        },
    );
    a.step("verify_ledger(): every account", |c, _| {
        same(
            "verify_ledger()",
            run(
                c,
                "SELECT account, ok::pg_catalog.text FROM exactly.verify_ledger() ORDER BY 1",
            )?
            .into_iter()
            .map(|r| {
                format!(
                    "{}:{}",
                    r[0].clone().unwrap_or_default(),
                    r[1].clone().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>(),
            vec![
                "alice:true".to_string(),
                "bob:true".into(),
                "carol:true".into(),
                "default:true".into(),
            ],
        )
    });
    a.step("verify_ledger(account)", |c, k| {
        same("verify_ledger('alice')", run(c, "SELECT account, ok::pg_catalog.text FROM exactly.verify_ledger('alice')")?,
             vec![vec![Some("alice".into()), Some("true".into())]])?;
        same(
            "balances",
            col(k, "SELECT account || ':' || balance::float8 || ':' || entries FROM exactly.accounts ORDER BY 1")?,
            vec!["alice:40:7".to_string(), "bob:9:3".into(), "carol:25:3".into(), "default:101:2".into()],
        )
    });

    // ---------------- running balances on the caller's own tables ----------------
    a.step("maintain_running_balance trigger: inserts (account column, serial key)", |c, _| {
        let mut got = Vec::new();
        for (account, amount) in [("x", "10"), ("x", "5"), ("y", "3")] {
            got.push(num(&one(c, &format!(
                "INSERT INTO shop.entries (account, amount) VALUES ('{account}', '{amount}') RETURNING running_balance"))?));
        }
        got.extend(col(c, "INSERT INTO shop.entries (account, amount) VALUES ('x', '1'), ('y', '1') RETURNING running_balance")?
            .iter().map(|s| num(s)));
        same("running balances", got, vec![10.0, 15.0, 3.0, 16.0, 4.0])
    });
    a.step("maintain_running_balance trigger: update and delete refused, other columns free", |c, k| {
        refused(c, "UPDATE shop.entries SET amount = '99' WHERE account OPERATOR(pg_catalog.=) 'x'", "23001")?;
        refused(c, "UPDATE shop.entries SET running_balance = '0' WHERE account OPERATOR(pg_catalog.=) 'y'", "23001")?;
        refused(c, "UPDATE shop.entries SET account = 'z' WHERE account OPERATOR(pg_catalog.=) 'y'", "23001")?;
        refused(c, "DELETE FROM shop.entries WHERE account OPERATOR(pg_catalog.=) 'y'", "23001")?;
        run(c, "UPDATE shop.entries SET note = 'checked'")?;
        same(
            "ledger in key order",
            col(k, "SELECT string_agg(account || ':' || amount::float8 || ':' || running_balance::float8, ' ' ORDER BY id) FROM shop.entries")?,
            vec!["x:10:10 x:5:15 y:3:3 x:1:16 y:1:4".to_string()],
        )
    });
    a.step("maintain_running_balance trigger: one ledger per table (identity key)", |c, k| {
        let mut got = Vec::new();
        for amount in ["5", "-2", "10"] {
            got.push(num(&one(c, &format!("INSERT INTO shop.single_ledger (amount) VALUES ('{amount}') RETURNING balance"))?));
        }
        same("balances", got, vec![5.0, 3.0, 13.0])?;
        same("key order", col(k, "SELECT string_agg(balance::float8::text, ' ' ORDER BY id) FROM shop.single_ledger")?,
             vec!["5 3 13".to_string()])
    });

    // ---------------- find_or_create / increment ----------------
    let mut books = 0i64;
    a.step("find_or_create: create", |c, _| {
        let row = run(c, r#"SELECT data::pg_catalog.text, created::pg_catalog.text FROM exactly.find_or_create('shop.counters', '{"key": "books"}', '{"label": "Books"}')"#)?;
        let data = json(row.first().and_then(|r| r[0].as_deref()).unwrap_or("null"))?;
        books = json_i64(&data, "id");
        same("created", row.first().and_then(|r| r[1].clone()), Some("true".into()))?;
        same("row", (data["key"].clone(), data["label"].clone(), data["value"].clone()),
             (serde_json::json!("books"), serde_json::json!("Books"), serde_json::json!(0)))
    });
    let books_id = books;
    a.step("find_or_create: find", |c, _| {
        let row = run(c, r#"SELECT data::pg_catalog.text, created::pg_catalog.text FROM exactly.find_or_create(rel => 'shop.counters', key => '{"key": "books"}')"#)?;
        let data = json(row.first().and_then(|r| r[0].as_deref()).unwrap_or("null"))?;
        same("found", (json_i64(&data, "id"), row.first().and_then(|r| r[1].clone())), (books_id, Some("false".into())))
    });
    a.step("find_or_create: two-column key, create and find", |c, _| {
        let row = run(c, r#"SELECT data::pg_catalog.text, created::pg_catalog.text FROM exactly.find_or_create('shop.pairs', '{"tenant": 1, "sku": "A-1"}', '{"qty": "2.50"}')"#)?;
        let data = json(row.first().and_then(|r| r[0].as_deref()).unwrap_or("null"))?;
        same("created", (data["qty"].to_string(), row.first().and_then(|r| r[1].clone())), ("2.50".into(), Some("true".into())))?;
        let again = run(c, r#"SELECT created::pg_catalog.text FROM exactly.find_or_create('shop.pairs', '{"tenant": 1, "sku": "A-1"}')"#)?;
        same("found", again, vec![vec![Some("false".into())]])
    });
    a.step("increment: create, then add", |c, k| {
        same("created", num(&one(c, r#"SELECT exactly.increment('shop.counters', '{"key": "pens"}', 'value', 5)::pg_catalog.text"#)?), 5.0)?;
        same("added", num(&one(c, r#"SELECT exactly.increment(rel => 'shop.counters', key => '{"key": "pens"}', col => 'value')::pg_catalog.text"#)?), 6.0)?;
        same("existing", num(&one(c, r#"SELECT exactly.increment('shop.counters', '{"key": "books"}', 'value')::pg_catalog.text"#)?), 1.0)?;
        same("table", col(k, "SELECT key || '=' || value FROM shop.counters ORDER BY key")?, vec!["books=1".to_string(), "pens=6".into()])
    });
    a.step("increment: numeric column, two-column key", |c, k| {
        same("added", num(&one(c, r#"SELECT exactly.increment('shop.pairs', '{"tenant": 1, "sku": "A-1"}', 'qty', '0.25')::pg_catalog.text"#)?), 2.75)?;
        same("created", num(&one(c, r#"SELECT exactly.increment('shop.pairs', '{"tenant": 3, "sku": "B"}', 'qty', 1)::pg_catalog.text"#)?), 1.0)?;
        same("table", col(k, "SELECT tenant || sku || '=' || qty::float8 FROM shop.pairs ORDER BY 1")?,
             vec!["1A-1=2.75".to_string(), "3B=1".into()])
    });
    a.step("find_or_create / increment: errors", |c, k| {
        refused(c, r#"SELECT * FROM exactly.find_or_create('shop.counters', '{"nope": 1}')"#, "42703")?;
        refused(c, r#"SELECT * FROM exactly.find_or_create('shop.counters', '{"label": "x"}')"#, "42P10")?;
        refused(c, r#"SELECT * FROM exactly.find_or_create('shop.counters', '{"key": null}')"#, "22004")?;
        refused(c, r#"SELECT * FROM exactly.find_or_create('shop.counters', '[]')"#, "22023")?;
        refused(c, r#"SELECT * FROM exactly.find_or_create('shop.counters', '{}')"#, "22023")?;
        refused(c, r#"SELECT * FROM exactly.find_or_create('shop.counters', '{"key": "k"}', '{"key": "k"}')"#, "22023")?;
        refused(c, r#"SELECT * FROM exactly.find_or_create('shop.counters_id_seq', '{"x": 1}')"#, "42809")?;
        refused(c, r#"SELECT exactly.increment('shop.counters', '{"key": "books"}', 'label')"#, "42804")?;
        refused(c, r#"SELECT exactly.increment('shop.counters', '{"key": "books"}', 'value', '1.5')"#, "22023")?;
        refused(c, r#"SELECT exactly.increment('shop.counters', '{"key": "books"}', 'key')"#, "22023")?;
        same("table", col(k, "SELECT key || '=' || value FROM shop.counters ORDER BY key")?, vec!["books=1".to_string(), "pens=6".into()])
    });
    a.step("find_or_create / increment: after the table changed (statements written again)", |c, k| {
        run(k, "ALTER TABLE shop.counters ADD COLUMN extra int DEFAULT 7")?;
        let row = run(c, r#"SELECT data::pg_catalog.text, created::pg_catalog.text FROM exactly.find_or_create('shop.counters', '{"key": "cups"}')"#)?;
        let data = json(row.first().and_then(|r| r[0].as_deref()).unwrap_or("null"))?;
        same("created", (data["extra"].clone(), row.first().and_then(|r| r[1].clone())), (serde_json::json!(7), Some("true".into())))?;
        same("increment", num(&one(c, r#"SELECT exactly.increment('shop.counters', '{"key": "cups"}', 'value')::pg_catalog.text"#)?), 1.0)
    });
    a.step("find_or_create: in a REPEATABLE READ transaction", |c, _| {
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").map_err(|e| describe(&e))?;
        let found = one(c, r#"SELECT created::pg_catalog.text FROM exactly.find_or_create('shop.counters', '{"key": "books"}')"#)?;
        let made = one(c, r#"SELECT created::pg_catalog.text FROM exactly.find_or_create('shop.counters', '{"key": "rr"}')"#)?;
        c.batch_execute("COMMIT").map_err(|e| describe(&e))?;
        same("created", (found, made), ("false".into(), "true".into()))
    });

    // ---------------- claims ----------------
    let claim_sql = |batch: i32, lease: &str| {
        format!("SELECT claim::pg_catalog.text, data::pg_catalog.text FROM exactly.claim_batch('shop.jobs', 'done_at', batch => {batch}, lease => '{lease}')")
    };
    let (mut c1, mut c2) = (String::new(), String::new());
    a.step("claim_batch: first claim", |c, _| {
        let (claim, ids) = claimed(c, &claim_sql(2, "5 minutes"), "id")?;
        c1 = claim;
        same("ids", ids, range(1, 2))
    });
    a.step("claim_batch: second claim", |c, _| {
        let (claim, ids) = claimed(c, "SELECT claim::pg_catalog.text, data::pg_catalog.text FROM exactly.claim_batch('shop.jobs', 'done_at', 3)", "id")?;
        c2 = claim;
        same("ids", ids, range(3, 5))
    });
    let (c1, c2) = (c1, c2);
    let no_claim = |claim: &str| -> Result<(), String> {
        if claim.is_empty() {
            Err("no claim to work on: claim_batch failed above".into())
        } else {
            Ok(())
        }
    };
    a.step("extend_claim: a live claim", |c, _| {
        no_claim(&c1)?;
        same(
            "rows held",
            one(
                c,
                &format!("SELECT exactly.extend_claim('{c1}', '10 minutes')"),
            )?,
            "2".into(),
        )
    });
    a.step("complete_batch: a live claim, then again", |c, k| {
        no_claim(&c1)?;
        same(
            "marked",
            one(c, &format!("SELECT exactly.complete_batch('{c1}')"))?,
            "2".into(),
        )?;
        same(
            "again",
            one(
                c,
                &format!("SELECT exactly.complete_batch(claim => '{c1}')"),
            )?,
            "0".into(),
        )?;
        same(
            "done",
            col(
                k,
                "SELECT id::text FROM shop.jobs WHERE done_at IS NOT NULL ORDER BY id",
            )?,
            range(1, 2),
        )
    });
    a.step("release_claim: a live claim", |c, k| {
        no_claim(&c2)?;
        same("released", one(c, &format!("SELECT exactly.release_claim('{c2}')"))?, "3".into())?;
        same(
            "claim_attempts",
            col(k, "SELECT (key->>'id') || ':' || failed_attempts FROM exactly.claim_attempts WHERE rel = 'shop.jobs'::regclass ORDER BY (key->>'id')::int")?,
            vec!["3:1".to_string(), "4:1".into(), "5:1".into()],
        )
    });
    a.step(
        "claim_batch / complete_batch: the rest, then nothing pending",
        |c, _| {
            let (claim, ids) = claimed(c, &claim_sql(100, "5 minutes"), "id")?;
            same("ids", ids, range(3, 20))?;
            same(
                "marked",
                one(c, &format!("SELECT exactly.complete_batch('{claim}')"))?,
                "18".into(),
            )?;
            same(
                "nothing pending",
                run(c, &claim_sql(100, "5 minutes"))?.len(),
                0,
            )
        },
    );
    a.step("claim_batch: an expired claim's rows go to a new claim; the stale claim does nothing", |c, k| {
        run(k, "INSERT INTO shop.jobs SELECT g, 'job ' || g FROM generate_series(21, 25) g")?;
        let (stale, ids) = claimed(c, &claim_sql(5, "1 millisecond"), "id")?;
        same("first claim", ids, range(21, 25))?;
        std::thread::sleep(Duration::from_millis(50));
        let (fresh, ids) = claimed(c, &claim_sql(5, "5 minutes"), "id")?;
        same("after the lease", ids, range(21, 25))?;
        same("stale complete", one(c, &format!("SELECT exactly.complete_batch('{stale}')"))?, "0".into())?;
        same("stale extend", one(c, &format!("SELECT exactly.extend_claim('{stale}')"))?, "0".into())?;
        same("stale release", one(c, &format!("SELECT exactly.release_claim('{stale}')"))?, "0".into())?;
        same("complete", one(c, &format!("SELECT exactly.complete_batch('{fresh}')"))?, "5".into())?;
        same(
            "claim_attempts",
            col(k, "SELECT (key->>'id') || ':' || failed_attempts FROM exactly.claim_attempts WHERE rel = 'shop.jobs'::regclass AND (key->>'id')::int > 20 ORDER BY (key->>'id')::int")?,
            vec!["21:1".to_string(), "22:1".into(), "23:1".into(), "24:1".into(), "25:1".into()],
        )
    });
    a.step(
        "claim_batch: seventeen claims in a row (the periodic full look)",
        |c, k| {
            run(
                k,
                "INSERT INTO shop.jobs SELECT g, 'job ' || g FROM generate_series(26, 45) g",
            )?;
            let mut got = Vec::new();
            for _ in 0..17 {
                let (claim, ids) = claimed(c, &claim_sql(1, "5 minutes"), "id")?;
                got.extend(ids);
                same(
                    "marked",
                    one(c, &format!("SELECT exactly.complete_batch('{claim}')"))?,
                    "1".into(),
                )?;
            }
            same("ids", got, range(26, 42))?;
            let (claim, ids) = claimed(c, &claim_sql(100, "5 minutes"), "id")?;
            same("rest", ids, range(43, 45))?;
            same(
                "marked",
                one(c, &format!("SELECT exactly.complete_batch('{claim}')"))?,
                "3".into(),
            )?;
            same(
                "pending",
                one(
                    k,
                    "SELECT count(*)::text FROM shop.jobs WHERE done_at IS NULL",
                )?,
                "0".into(),
            )
        },
    );
    a.step("claim_batch / complete_batch: text key, date done column", |c, k| {
        let (claim, codes) = claimed(c, "SELECT claim::pg_catalog.text, data::pg_catalog.text FROM exactly.claim_batch('shop.tasks', 'finished', 2)", "code")?;
        same("codes", codes, vec!["a".to_string(), "b".into()])?;
        same("marked", one(c, &format!("SELECT exactly.complete_batch('{claim}')"))?, "2".into())?;
        same("done", col(k, "SELECT code || ':' || (finished = current_date) FROM shop.tasks WHERE finished IS NOT NULL ORDER BY code")?,
             vec!["a:true".to_string(), "b:true".into()])
    });
    a.step("claim_batch: errors", |c, _| {
        refused(
            c,
            "SELECT * FROM exactly.claim_batch('shop.jobs', 'done_at', 0)",
            "22023",
        )?;
        refused(
            c,
            "SELECT * FROM exactly.claim_batch('shop.jobs', 'done_at', 100001)",
            "22023",
        )?;
        refused(
            c,
            "SELECT * FROM exactly.claim_batch('shop.jobs', 'done_at', 1, '0 seconds')",
            "22023",
        )?;
        refused(
            c,
            "SELECT * FROM exactly.claim_batch('shop.jobs', 'payload')",
            "42804",
        )?;
        refused(
            c,
            "SELECT * FROM exactly.claim_batch('shop.jobs', 'nope')",
            "42703",
        )?;
        refused(
            c,
            "SELECT * FROM exactly.claim_batch('shop.nopk', 'done_at')",
            "55000",
        )
    });

    // ---------------- named locks ----------------
    a.step("lock / try_lock / lock_status: held by the caller", |c, _| {
        c.batch_execute("BEGIN").map_err(|e| describe(&e))?;
        run(c, "SELECT exactly.lock('job-lock')")?;
        run(c, "SELECT exactly.lock('job-lock', timeout => '1 second')")?;
        let again = one(c, "SELECT exactly.try_lock('job-lock')::pg_catalog.text")?;
        let status = run(c, "SELECT pid::pg_catalog.text, granted::pg_catalog.text FROM exactly.lock_status('job-lock')")?;
        let pid = one(c, "SELECT pg_catalog.pg_backend_pid()::pg_catalog.text")?;
        c.batch_execute("COMMIT").map_err(|e| describe(&e))?;
        same("try_lock while held", again, "true".into())?;
        same("lock_status", status, vec![vec![Some(pid), Some("true".into())]])?;
        same("after commit", run(c, "SELECT pid FROM exactly.lock_status('job-lock')")?.len(), 0)
    });
    let mut holder = cluster.connect();
    holder
        .batch_execute("SET search_path = pg_catalog; BEGIN; SELECT exactly.lock('held')")
        .unwrap();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    a.step("lock / try_lock / lock_status: held by another transaction", |c, _| {
        same("try_lock", one(c, "SELECT exactly.try_lock('held')::pg_catalog.text")?, "false".into())?;
        refused(c, "SELECT exactly.lock('held', timeout => '0')", "55P03")?;
        refused(c, "SELECT exactly.lock('held', '50 milliseconds')", "55P03")?;
        c.batch_execute("SET lock_timeout = '50ms'").map_err(|e| describe(&e))?;
        let r = refused(c, "SELECT exactly.lock('held')", "55P03");
        c.batch_execute("RESET lock_timeout").map_err(|e| describe(&e))?;
        r?;
        same("lock_status", run(c, "SELECT pid::pg_catalog.text, granted::pg_catalog.text FROM exactly.lock_status('held')")?,
             vec![vec![Some(holder_pid.to_string()), Some("true".into())]])
    });
    let _ = holder.batch_execute("COMMIT");
    a.step(
        "try_lock after the holder committed; lock errors",
        |c, _| {
            same(
                "try_lock",
                one(c, "SELECT exactly.try_lock('held')::pg_catalog.text")?,
                "true".into(),
            )?;
            refused(c, "SELECT exactly.lock('')", "22023")?;
            refused(
                c,
                "SELECT exactly.lock('x', timeout => '-1 second')",
                "22023",
            )?;
            refused(c, "SELECT exactly.try_lock('')", "22023")
        },
    );

    // ---------------- grant_usage (0.3) ----------------
    a.step("grant_usage", |c, k| {
        if superuser {
            run(c, "SELECT exactly.grant_usage('reader')")?;
            same(
                "reader can execute",
                one(k, "SELECT has_function_privilege('reader', 'exactly.next_invoice_number(text, date)', 'EXECUTE')::text")?,
                "true".into(),
            )
        } else {
            refused(c, "SELECT exactly.grant_usage('reader')", "42501")
        }
    });
}

fn attack(role: &str, search_path: &str) {
    let cluster = Cluster::start();
    plant_hostile_objects(&cluster);
    let mut a = Attack::new_after_setup(&cluster, role, search_path);
    scenario(&cluster, &mut a, role == "postgres");
    a.finish();
}

impl Attack {
    /// Setup first (its own connections), then the caller's connection.
    fn new_after_setup(cluster: &Cluster, role: &str, search_path: &str) -> Attack {
        let mut setup_faults = Attack {
            label: format!("as {role}, search_path = {search_path}"),
            reconnect: None,
            server_log: cluster.dir().join("server.log"),
            caller: cluster.connect(),
            notices: Arc::new(Mutex::new(Vec::new())),
            check: cluster.connect(),
            hits_seen: 0,
            faults: Vec::new(),
        };
        setup(cluster, role, &mut setup_faults);
        let mut a = Attack::new(cluster, role, search_path);
        a.faults = setup_faults.faults;
        a
    }
}

#[test]
fn hostile_public_objects_never_run_default_path_as_superuser() {
    attack("postgres", DEFAULT_PATH);
}

#[test]
fn hostile_public_objects_never_run_public_first_as_superuser() {
    attack("postgres", PUBLIC_FIRST);
}

#[test]
fn hostile_public_objects_never_run_default_path_as_app_role() {
    attack("app", DEFAULT_PATH);
}

#[test]
fn hostile_public_objects_never_run_public_first_as_app_role() {
    attack("app", PUBLIC_FIRST);
}

/// The control: the same scenario on a clean search_path (`pg_catalog`) is right, so a
/// "wrong result" above is the hostile objects' doing; and the detector catches a function
/// that, like a naive implementation, does not pin its search_path and writes `=`.
#[test]
fn control_clean_path_is_right_and_the_detector_catches_an_unpinned_function() {
    let cluster = Cluster::start();
    plant_hostile_objects(&cluster);
    let mut a = Attack::new_after_setup(&cluster, "postgres", "pg_catalog");
    scenario(&cluster, &mut a, true);
    let clean_faults = std::mem::take(&mut a.faults);

    cluster
        .connect()
        .batch_execute(
            "SET search_path = pg_catalog;
             CREATE FUNCTION shop.naive_lookup(t text) RETURNS bigint LANGUAGE sql AS
               'SELECT next_value FROM exactly.invoice_sequences WHERE tenant = t';
             CREATE FUNCTION shop.naive_stamp() RETURNS timestamptz LANGUAGE plpgsql AS
               'BEGIN RETURN now(); END';
             CREATE FUNCTION shop.naive_is_claims(r regclass) RETURNS boolean LANGUAGE sql AS
               'SELECT r = ''exactly.claims''::regclass';",
        )
        .unwrap();
    let mut naive = Attack::new(&cluster, "postgres", PUBLIC_FIRST);
    naive.step("naive_lookup", |c, _| {
        run(c, "SELECT shop.naive_lookup('eu')").map(|_| ())
    });
    naive.step("naive_stamp", |c, _| {
        run(c, "SELECT shop.naive_stamp()").map(|_| ())
    });
    let mut default = Attack::new(&cluster, "postgres", DEFAULT_PATH);
    default.step("naive_is_claims", |c, _| {
        run(c, "SELECT shop.naive_is_claims('exactly.claims')").map(|_| ())
    });
    let caught_escalation = naive
        .faults
        .iter()
        .any(|f| f.contains("HOSTILE BECAME SUPERUSER"));
    assert!(
        naive.faults.len() >= 2 && default.faults.len() >= 1 && caught_escalation,
        "the detector missed an unpinned function: {:?} {:?}",
        naive.faults,
        default.faults
    );
    assert!(
        clean_faults.is_empty(),
        "on a clean search_path the scenario itself fails (the test's expectations are wrong, or 0.x broke):\n{}",
        clean_faults.join("\n")
    );
}
