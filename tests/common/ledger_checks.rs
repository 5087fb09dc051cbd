//! Ledger-wide checks of the double-entry tables, shared by the transfer suites: each
//! returns its faults (empty when all is well), at most five rows of each kind.

use postgres::Client;

use super::text::raw;

/// Rows of a query as text (NULL as "NULL"); panics when the query fails.
fn texts(client: &mut Client, sql: &str) -> Vec<Vec<String>> {
    raw(client, sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| v.unwrap_or_else(|| "NULL".into()))
                .collect()
        })
        .collect()
}

/// The entries agree with themselves and with the accounts and transfers: running balances
/// chain per account in id order; each account's balance and entry count equal its last
/// running balance and its number of entries; every transfer has exactly two entries,
/// -amount on its from account and +amount on its to account; no entry names a transfer
/// that does not exist.
pub fn entry_faults(client: &mut Client) -> Vec<String> {
    let mut faults = Vec::new();
    // running balances chain, per account in id order
    for r in texts(
        client,
        "SELECT account, id, prev::text, amount::text, running_balance::text FROM (
             SELECT account, id, amount, running_balance,
                    coalesce(lag(running_balance) OVER (PARTITION BY account ORDER BY id), 0) AS prev
             FROM exactly.payments) x
         WHERE running_balance IS DISTINCT FROM prev + amount ORDER BY id LIMIT 5",
    ) {
        faults.push(format!(
            "chain: account {} entry {}: {} + {} != running {}",
            r[0], r[1], r[2], r[3], r[4]
        ));
    }
    // balance and entries equal the last entry and the count
    for r in texts(
        client,
        "SELECT a.account, a.balance::text, a.entries::text,
                coalesce((SELECT p.running_balance FROM exactly.payments p WHERE p.account = a.account
                          ORDER BY p.id DESC LIMIT 1), 0)::text,
                (SELECT count(*) FROM exactly.payments p WHERE p.account = a.account)::text
         FROM exactly.accounts a
         WHERE a.balance IS DISTINCT FROM coalesce((SELECT p.running_balance FROM exactly.payments p
                                                    WHERE p.account = a.account ORDER BY p.id DESC LIMIT 1), 0)
            OR a.entries IS DISTINCT FROM (SELECT count(*) FROM exactly.payments p WHERE p.account = a.account)
         LIMIT 5",
    ) {
        faults.push(format!(
            "account {}: balance {} entries {}, but last running balance {} and {} entries",
            r[0], r[1], r[2], r[3], r[4]
        ));
    }
    // every transfer: exactly two entries, -amount on from, +amount on to
    for r in texts(
        client,
        "SELECT t.id, t.from_account, t.to_account, t.amount::text,
                coalesce(string_agg(p.account || ' ' || p.amount::text, ', ' ORDER BY p.id), 'no entries')
         FROM exactly.transfers t LEFT JOIN exactly.payments p ON p.transfer_id = t.id
         GROUP BY t.id, t.from_account, t.to_account, t.amount
         HAVING count(p.id) <> 2
             OR count(*) FILTER (WHERE p.account = t.from_account AND p.amount = -t.amount) <> 1
             OR count(*) FILTER (WHERE p.account = t.to_account AND p.amount = t.amount) <> 1
         ORDER BY t.id LIMIT 5",
    ) {
        faults.push(format!(
            "torn transfer {} ({} -> {} {}): entries {}",
            r[0], r[1], r[2], r[3], r[4]
        ));
    }
    let orphans = &texts(
        client,
        "SELECT count(*) FROM exactly.payments p WHERE p.transfer_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM exactly.transfers t WHERE t.id = p.transfer_id)",
    )[0][0];
    if orphans != "0" {
        faults.push(format!(
            "{orphans} entries point at a transfer that does not exist"
        ));
    }
    faults
}

/// `verify_ledger()`: every account it does not find ok.
pub fn verify_ledger_faults(client: &mut Client) -> Vec<String> {
    texts(
        client,
        "SELECT account, coalesce(detail, 'NULL') FROM exactly.verify_ledger() WHERE NOT ok LIMIT 5",
    )
    .into_iter()
    .map(|r| format!("verify_ledger: account {}: {}", r[0], r[1]))
    .collect()
}
