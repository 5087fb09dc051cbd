//! The crash suites' loop: rounds of load, each ended by stopping the server the hard way,
//! then a restart and a check of everything acknowledged so far.

use std::time::Duration;

use super::Cluster;

/// One round of load: records what the clients were told had committed in the
/// acknowledgements `A`, ends with `stop_server` (or, with `None`, by stopping the clients),
/// and returns the faults seen during the load.
pub type Round<A> = fn(&Cluster, usize, &mut A, Duration, Option<&dyn Fn(&Cluster)>) -> Vec<String>;

/// `cycles` rounds of load on `cluster` (set up already), each ended by `stop_server`,
/// restart, `check`; then a clean final round (the primitives still work after the last
/// restart) and a last `check`. Panics with every fault found.
pub fn cycles<A: Default>(
    cluster: &Cluster,
    stop_server: &dyn Fn(&Cluster),
    cycles: usize,
    round: Round<A>,
    check: fn(&Cluster, &A) -> Vec<String>,
    summary: fn(&A) -> String,
) {
    let mut acked = A::default();
    let mut faults = Vec::new();
    for r in 0..cycles {
        faults.extend(round(
            cluster,
            r,
            &mut acked,
            Duration::from_millis(2500),
            Some(stop_server),
        ));
        cluster.start_server();
        faults.extend(
            check(cluster, &acked)
                .into_iter()
                .map(|f| format!("after crash {}: {f}", r + 1)),
        );
        eprintln!(
            "after crash {}: acknowledged so far {}",
            r + 1,
            summary(&acked)
        );
    }
    // everything still works after the last restart
    faults.extend(round(
        cluster,
        cycles,
        &mut acked,
        Duration::from_millis(500),
        None,
    ));
    faults.extend(
        check(cluster, &acked)
            .into_iter()
            .map(|f| format!("after a clean final round: {f}")),
    );
    super::assert_no_faults(&faults);
}
