use super::*;

const A: AccountId = AccountId(1);
const B: AccountId = AccountId(2);

#[test]
fn seed_scenario_three_slots_eight_jobs_in_order() {
    let mut s = Scheduler::new(&[u32::MAX]);
    let started: Vec<_> = (0..3).map(|_| s.try_start(A, 3, None, 0)).collect();
    assert_eq!(started, vec![Some(0), Some(0), Some(0)]);
    assert_eq!(s.try_start(A, 3, None, 0), None, "job 4 must wait");
    for id in 4..=8 {
        assert_eq!(s.enqueue(A, 3, id, None, 100, false), Ok(id as usize - 3));
    }
    assert!(s.dispatch(0).is_empty(), "nothing frees, nothing starts");
    s.release(A, 0); // job 1 completes
    let g = s.dispatch(0);
    assert_eq!(g.iter().map(|g| g.waiter).collect::<Vec<_>>(), vec![4]);
    s.release(A, 0); // job 2 completes
    assert_eq!(s.dispatch(0)[0].waiter, 5);
    assert_eq!(s.tenant_load(A), (3, 3));
}

#[test]
fn newcomers_never_jump_the_queue() {
    let mut s = Scheduler::new(&[u32::MAX]);
    s.try_start(A, 1, None, 0).unwrap();
    s.enqueue(A, 1, 10, None, 10, false).unwrap();
    s.release(A, 0);
    assert_eq!(
        s.try_start(A, 1, None, 0),
        None,
        "waiter 10 is first in line"
    );
    assert_eq!(s.dispatch(0)[0].waiter, 10);
}

#[test]
fn queue_bound_and_removal() {
    let mut s = Scheduler::new(&[1]);
    s.try_start(A, 1, None, 0).unwrap();
    s.enqueue(A, 1, 1, None, 2, false).unwrap();
    s.enqueue(A, 1, 2, None, 2, false).unwrap();
    assert_eq!(
        s.enqueue(A, 1, 3, None, 2, false),
        Err(QueueFull { waiting: 2 })
    );
    assert!(s.remove(A, 1));
    assert!(!s.remove(A, 1), "already gone");
    assert_eq!(s.position(A, 2), Some(1));
    s.release(A, 0);
    assert_eq!(s.dispatch(0)[0].waiter, 2);
    s.release(A, 0);
    assert_eq!(s.tenants_tracked(), 0, "idle tenants are forgotten");
}

#[test]
fn upstreams_round_robin_skipping_full_and_cooling_ones() {
    let mut s = Scheduler::new(&[2, 2]);
    let picks: Vec<_> = (0..4)
        .map(|_| s.try_start(A, 10, None, 0).unwrap())
        .collect();
    assert_eq!(picks, vec![0, 1, 0, 1]);
    assert_eq!(s.try_start(A, 10, None, 0), None, "both upstreams full");
    s.release(A, 1);
    s.cool_down(1, 5_000);
    assert_eq!(
        s.try_start(A, 10, None, 1_000),
        None,
        "upstream 1 is cooling down"
    );
    s.release(A, 0);
    assert_eq!(s.try_start(A, 10, None, 1_000), Some(0));
    s.enqueue(A, 10, 7, None, 10, false).unwrap();
    assert_eq!(s.next_cooldown_end(1_000), Some(5_000));
    assert!(s.dispatch(4_999).is_empty());
    assert_eq!(s.dispatch(5_000)[0].upstream, 1);
}

#[test]
fn follow_up_jobs_wait_for_their_upstream() {
    let mut s = Scheduler::new(&[1, 1]);
    assert_eq!(s.try_start(A, 10, None, 0), Some(0));
    assert_eq!(
        s.try_start(A, 10, Some(0), 0),
        None,
        "upstream 0 is busy; 1 is not an option"
    );
    s.enqueue(A, 10, 1, Some(0), 10, false).unwrap();
    assert!(s.dispatch(0).is_empty());
    s.release(A, 0);
    assert_eq!(
        s.dispatch(0),
        vec![Grant {
            tenant: A,
            waiter: 1,
            upstream: 0
        }]
    );
}

#[test]
fn tenants_take_turns_on_a_shared_pool() {
    let mut s = Scheduler::new(&[1]);
    s.try_start(A, 100, None, 0).unwrap();
    for id in 0..200 {
        s.enqueue(A, 100, id, None, 1_000, false).unwrap();
    }
    s.enqueue(B, 100, 1_000, None, 1_000, false).unwrap();
    s.release(A, 0);
    let first = s.dispatch(0);
    s.release(first[0].tenant, 0);
    let second = s.dispatch(0);
    let tenants = [first[0].tenant, second[0].tenant];
    assert!(
        tenants.contains(&B),
        "B's single job runs within two slot hand-offs, got {tenants:?}"
    );
}

#[test]
fn a_retried_job_goes_to_the_front() {
    let mut s = Scheduler::new(&[1]);
    s.try_start(A, 1, None, 0).unwrap();
    s.enqueue(A, 1, 1, None, 1, false).unwrap();
    s.enqueue(A, 1, 2, None, 1, true).unwrap();
    assert_eq!(s.position(A, 2), Some(1));
}

#[test]
fn shadow_jobs_start_past_the_caps_and_count_as_running() {
    let mut s = Scheduler::new(&[1, 1]);
    assert_eq!(s.force_start(A, 2, None, 0), (0, false));
    assert_eq!(s.force_start(A, 2, None, 0), (1, false));
    // The tenant is at its cap: the third would wait, so it goes to the least busy account.
    let (upstream, would_wait) = s.force_start(A, 2, None, 0);
    assert!(would_wait);
    assert_eq!(s.tenant_load(A), (3, 0));
    assert_eq!(s.upstream_in_flight().iter().sum::<u32>(), 3);
    assert_eq!(s.force_start(B, 5, Some(upstream), 0), (upstream, true));
    // Releases bring the counts back down; a queued enforced job then starts as usual.
    for u in [0, 1, upstream] {
        s.release(A, u);
    }
    s.release(B, upstream);
    assert_eq!(s.upstream_in_flight(), vec![0, 0]);
    assert_eq!(s.tenants_tracked(), 0);
}
