//! Shadow mode: a shadow limit decides and counts but never refuses, and never changes what the
//! enforced limits decide or consume; a shadow job class counts what the queue would do and
//! forwards at once.

mod support;

use support::{metric, metrics, Gate, TestClient, Upstream, DAY0_MS};

const GEN: &str = "/v1/generate";

fn config(limits: &str) -> String {
    format!(
        "[server]\n[identity]\ndefault_tier = \"basic\"\n\
         [[route]]\nmethod = \"POST\"\npath = \"{GEN}\"\nclass = \"generate\"\n{limits}"
    )
}

fn would_limit(m: &str, kind: &str) -> f64 {
    metric(
        m,
        &format!(
            "floodgate_would_limit_total{{class=\"generate\",tier=\"basic\",type=\"{kind}\"}}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_limit_counts_what_it_would_refuse_but_refuses_nothing() {
    let up = Upstream::start().await;
    let limits = "[[tiers.basic.limits]]\nclasses = [\"generate\"]\nper_minute = 5\n\
                  [[tiers.basic.limits]]\nclasses = [\"generate\"]\nper_minute = 2\nshadow = true\n";
    let gate = Gate::start(&config(limits), &up.url(), DAY0_MS + 1_000);
    let c = TestClient::new();
    for remaining in (0..5).rev() {
        let a = c.post(&gate.url(GEN), "k-shadow").await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.num("x-ratelimit-limit"),
            5,
            "headers show only enforced limits"
        );
        assert_eq!(a.num("x-ratelimit-remaining"), remaining);
    }
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(would_limit(&m, "minute"), 3.0, "requests 3, 4 and 5");
    let a = c.post(&gate.url(GEN), "k-shadow").await;
    assert_eq!(a.status, 429, "the enforced limit still refuses");
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        would_limit(&m, "minute"),
        3.0,
        "a request the enforced limits refuse is not counted again"
    );
    assert_eq!(
        metric(
            &m,
            "floodgate_limited_total{class=\"generate\",tier=\"basic\",type=\"minute\"}"
        ),
        1.0
    );
    assert_eq!(up.count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_and_enforced_rules_never_consume_for_each_other() {
    let up = Upstream::start().await;
    // Enforced: 2 a minute and 10 a day. Shadow: 3 a day.
    let limits = "[[tiers.basic.limits]]\nclasses = [\"generate\"]\nper_minute = 2\nper_day = 10\n\
                  [[tiers.basic.limits]]\nclasses = [\"generate\"]\nper_day = 3\nshadow = true\n";
    let gate = Gate::start(&config(limits), &up.url(), DAY0_MS + 1_000);
    let c = TestClient::new();
    let url = gate.url(GEN);
    let post = || c.post(&url, "k-both");
    assert_eq!(post().await.status, 200);
    assert_eq!(post().await.status, 200);
    let refused = post().await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.num("x-ratelimit-daily-remaining"),
        8,
        "the refused request consumed no enforced counter"
    );
    gate.clock.advance_ms(61_000);
    // The shadow daily count is 2, not 3: the refused request did not consume it either.
    let a = post().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 7);
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(would_limit(&m, "daily"), 0.0);
    // The next one is over the shadow's 3 a day: counted, admitted, and consuming the enforced
    // counters as usual.
    let a = post().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.num("x-ratelimit-daily-remaining"), 6);
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(would_limit(&m, "daily"), 1.0);
    assert_eq!(up.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_job_class_forwards_at_once_and_counts_would_queue() {
    let up = Upstream::start().await;
    let text = "[server]\n[identity]\ndefault_tier = \"basic\"\n\
                [[route]]\npath = \"/job/*\"\nclass = \"job\"\n\
                [[jobs]]\nclasses = [\"job\"]\nshadow = true\n\
                [tiers.basic]\nconcurrency = 1\nmax_queue = 1\n";
    let gate = Gate::start(text, &up.url(), DAY0_MS);
    let started = std::time::Instant::now();
    let jobs: Vec<_> = (0..4)
        .map(|_| {
            let url = gate.url("/job/run?ms=400");
            tokio::spawn(async move { TestClient::new().post(&url, "k-jobs").await })
        })
        .collect();
    for j in jobs {
        let a = j.await.unwrap();
        assert_eq!(a.status, 200, "{a:?}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "four 400 ms jobs at concurrency 1 ran side by side: {:?}",
        started.elapsed()
    );
    assert_eq!(up.max_in_flight(), 4, "none waited, none was refused");
    let m = metrics(&gate.admin_url("/metrics")).await;
    assert_eq!(
        metric(&m, "floodgate_would_queue_total{tier=\"basic\"}"),
        3.0
    );
    assert_eq!(metric(&m, "floodgate_jobs_in_flight{tier=\"basic\"}"), 0.0);
}
