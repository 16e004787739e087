//! Alerts end to end through the `pipeline!` macro and a real SQLite ledger: a failing run sends
//! exactly one JSON webhook, one Slack-format webhook and one email to loopback receivers (an
//! HTTP server and an SMTP server); further failures of the same incident send nothing; after a
//! success, the next failure alerts again. When one channel fails, the callback's retries resend
//! only that channel. When one channel fails, the callback's retries resend
//! only that channel.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use baton_runtime::executor::{BlockStatus, RunRequest, run};
use baton_runtime::ledger::TriggerKind;
use baton_runtime::partition::{Granularity, Partition};
use baton_tests::peers::{self, Peer};
use baton_tests::{HttpServer, free_port, workspace_root};

mod orchestrated {
    baton_macros::pipeline!("fixtures/pipelines/orchestrated.toml");
}

/// The loopback SMTP server (`tests/support/smtp_sink.py`), stopped on drop.
fn smtp_sink(dir: &Path) -> Peer {
    let port = free_port();
    let mut command = Command::new(peers::peers_python());
    command
        .arg(workspace_root().join("tests/support/smtp_sink.py"))
        .args(["--port", &port.to_string(), "--dir"])
        .arg(dir);
    Peer::spawn(command, port, "SMTP sink")
}

fn mails(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_alert_per_incident_on_every_channel() {
    let work = tempfile::tempdir().unwrap();
    let files = work.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("trips_2024-01-03.csv"),
        "trip_id,fare\n1,12.5\n2,0\n3,\n4,7.0\n",
    )
    .unwrap();
    let server = HttpServer::serve(&files);
    let mailbox = work.path().join("mail");
    std::fs::create_dir_all(&mailbox).unwrap();
    let smtp = smtp_sink(&mailbox);
    // SAFETY: this test binary runs one test, so no other thread reads the environment.
    unsafe {
        baton_tests::point_test_pipeline_at(&server, work.path());
        std::env::set_var("SLACK_WEBHOOK_URL", format!("{}/slack", server.url));
        std::env::set_var(
            "ALERT_EMAIL_URL",
            format!(
                "smtp://127.0.0.1:{}?tls=none&from=baton@example.com&to=oncall@example.com,data@example.com",
                smtp.port
            ),
        );
    }
    let services = baton_tests::sqlite_services(work.path()).await;
    let run_day = |key: &'static str| {
        let partition = Partition::parse(Granularity::Daily, key).unwrap();
        run(
            &orchestrated::PIPELINE,
            RunRequest::full(Some(partition), HashMap::new(), TriggerKind::Run),
            &services,
        )
    };
    let posts = |path: &str| {
        server
            .requests()
            .into_iter()
            .filter(|r| r.starts_with(&format!("POST {path} ")))
            .count()
    };

    // 2024-01-02 has no file: the incident opens and every channel hears of it once.
    assert!(!run_day("2024-01-02").await.unwrap().succeeded());
    assert_eq!((posts("/hook"), posts("/slack")), (1, 1));
    let slack: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST /slack "))
        .collect();
    let body: serde_json::Value =
        serde_json::from_str(slack[0].strip_prefix("POST /slack ").unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"text": ":rotating_light: orchestrated 2024-01-02: extract failed"})
    );
    let sent = mails(&mailbox);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].contains("X-Envelope-To: oncall@example.com, data@example.com"),
        "{}",
        sent[0]
    );
    assert!(
        sent[0].contains("Subject: [baton] orchestrated failed for 2024-01-02"),
        "{}",
        sent[0]
    );
    assert!(
        sent[0].contains("orchestrated failed for 2024-01-02 in extract"),
        "{}",
        sent[0]
    );

    // 2024-01-04 fails the same way: the incident is open, nothing more is sent.
    assert!(!run_day("2024-01-04").await.unwrap().succeeded());
    assert_eq!(
        (posts("/hook"), posts("/slack"), mails(&mailbox).len()),
        (1, 1, 1)
    );

    // A success closes the incident; the next failure alerts again.
    assert!(run_day("2024-01-03").await.unwrap().succeeded());
    assert!(!run_day("2024-01-05").await.unwrap().succeeded());
    assert_eq!(
        (posts("/hook"), posts("/slack"), mails(&mailbox).len()),
        (2, 2, 2)
    );

    // With the mail server gone, a new incident's email fails on every attempt of the callback
    // (3 retries), but the webhook it delivered on the first attempt is not sent again.
    drop(smtp);
    assert!(run_day("2024-01-03").await.unwrap().succeeded());
    let report = run_day("2024-01-06").await.unwrap();
    let alert = report.block("alert").unwrap();
    assert_eq!(alert.attempts, 4, "{:?}", alert.status);
    assert!(
        matches!(&alert.status, BlockStatus::Failed { error } if error.contains("email through")),
        "{:?}",
        alert.status
    );
    assert_eq!(
        (posts("/hook"), posts("/slack"), mails(&mailbox).len()),
        (3, 3, 2)
    );
}
