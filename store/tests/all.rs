//! The store test suite, run against SQLite and PostgreSQL.
//!
//! Each test is an `async fn(&TestDatabase)` in `suite/`; [`backend_tests!`] instantiates it
//! once per backend as `sqlite::<name>` and `postgres::<name>`. PostgreSQL tests get a fresh
//! database each and skip loudly (or fail, with `FERRIC_REQUIRE_SERVICES=1`) when no server
//! answers.

// `cfg(test)` marks the suite as test code for clippy (unwrap allowed), as integration tests
// are always built with it.
#[cfg(test)]
mod suite;

/// Instantiate each named suite test for both backends.
macro_rules! backend_tests {
    ($($module:ident :: $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = store::testing::TestDatabase::sqlite().await;
                    crate::suite::$module::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = store::testing::TestDatabase::postgres().await else { return };
                    crate::suite::$module::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

backend_tests!(
    schema::test_migrations_apply_and_rerun_is_noop,
    schema::test_connect_rejects_unknown_scheme,
    nodes::test_node_round_trips_every_field,
    nodes::test_node_insert_rejects_duplicates,
    nodes::test_node_insert_rejects_uuid_like_or_empty_name,
    nodes::test_node_fetch_by_ident_accepts_uuid_or_name,
    nodes::test_node_update_is_conditional_on_generation,
    nodes::test_node_update_does_not_touch_reservation,
    nodes::test_node_delete_removes_ports_and_history,
    nodes::test_node_lookup_by_macs,
    nodes::test_concurrent_updates_exactly_one_wins,
    nodes::test_node_record_heartbeat_leaves_the_generation,
    modify::test_node_modify_updates_and_reports_outcomes,
    modify::test_node_modify_reapplies_after_a_lost_race,
    modify::test_node_modify_concurrent_writers_lose_nothing,
    list::test_node_list_filters,
    list::test_node_heads_page_like_the_listing_and_fetch_many_reads_them_whole,
    list::test_node_list_pages_through_every_sort_key,
    list::test_node_list_rejects_bad_limit_and_unknown_marker,
    list::test_node_list_is_served_by_an_index,
    lock::test_reserve_is_reentrant_and_exclusive,
    lock::test_release_only_by_holder,
    lock::test_release_all_held_by_dead_conductor,
    lock::test_concurrent_reserve_exactly_one_wins,
    ports::test_port_crud,
    ports::test_port_mac_is_unique_case_insensitively,
    ports::test_port_list_filters_and_pages,
    conductors::test_conductor_register_heartbeat_unregister,
    conductors::test_conductor_list_stale,
    history::test_history_oldest_first_and_scoped_to_node,
    history::test_node_insert_recorded_writes_both_or_neither,
    secrets::test_secrets_are_encrypted_at_rest_and_read_back,
    secrets::test_rotation_moves_every_value_to_the_active_key,
    secrets::test_rotation_encrypts_plaintext_secrets,
    secrets::test_unknown_key_and_tampering_give_a_clear_error,
);
