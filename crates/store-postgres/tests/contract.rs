//! The storage contract suite on PostgreSQL: every check on a fresh database
//! (see `common`). Runs when `CARELAYER_TEST_POSTGRES` is set; fails on CI
//! when it is not; otherwise prints a loud skip notice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

/// Like `carelayer_store::contract_tests!`, but each test may skip (the
/// upstream macro requires a store). `CHECKS` lets
/// `every_contract_check_runs` catch a check added upstream but not here.
macro_rules! pg_contract_tests {
    ($($name:ident),* $(,)?) => {
        const CHECKS: &[&str] = &[$(stringify!($name)),*];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _db)) = common::fresh().await else {
                    return;
                };
                carelayer_store::contract::$name(&store).await;
                carelayer_store::Store::close(&store).await;
            }
        )*
    };
}

pg_contract_tests!(
    create_and_read,
    versions_and_vread,
    delete_marker,
    history_order_since_cursor,
    precondition_current_version,
    precondition_search_matches,
    write_set_is_atomic,
    index_replaced_on_update_removed_on_delete,
    search_token_string_uri_reference,
    search_date_prefixes,
    search_number_quantity_prefixes,
    search_missing_not_chain_has_composite,
    search_types_id_patient_last_updated,
    sort_by_param,
    paging_snapshot_total,
    audit_chain,
    audit_atomic_with_writes,
    concurrent_commits_no_lost_updates,
    concurrent_audit_appends,
    concurrent_reads_get_their_own_answers,
    failed_write_does_not_disturb_others,
    count_by_type,
    search_compound_and_keys_only,
    search_patient_scoped_codes,
    bulk_load_changes_no_answer,
    audit_search_filters,
    audit_head_raw_rows_checkpoints,
);

/// Every `pub async fn` check of the contract module is run above.
#[test]
fn every_contract_check_runs() {
    let source = include_str!("../../store/src/contract.rs");
    let mut missing = Vec::new();
    for line in source.lines() {
        if let Some(rest) = line.strip_prefix("pub async fn ") {
            let name = rest.split('(').next().unwrap_or_default();
            if !CHECKS.contains(&name) {
                missing.push(name.to_owned());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "contract checks not run on PostgreSQL: {missing:?}"
    );
}
