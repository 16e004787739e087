//! The audit trail of real runs of green_taxi_etl: each run is recorded with who started it, the
//! pipeline version and git commit, and what every block produced (row counts, content
//! checksums that repeat exactly when the same month is loaded again). `audit verify` passes on
//! the untouched trail and names the entry when one is edited, removed or cut off, or when a
//! run's recorded outcome is changed behind the trail's back.

use std::path::Path;

use baton_tests::{HttpServer, green_data_dir, output_text, run_pipeline, sqlite_rows};

fn pipeline(work: &Path, server: &HttpServer, args: &[&str]) -> std::process::Output {
    run_pipeline(
        "green_taxi_etl",
        work,
        &[("TLC_BASE_URL", server.url.as_str()), ("USER", "auditor")],
        args,
    )
}

fn sql(db: &Path, statement: &str) {
    let status = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(statement)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("sqlite3 runs");
    assert!(status.success(), "{statement}");
}

/// `audit verify` on a copy of the ledger changed by `tamper`: its exit status and report.
fn verify_after(work: &Path, server: &HttpServer, tamper: &str) -> (bool, String) {
    let ledger = work.join(".baton/ledger.db");
    let pristine = work.join("pristine.db");
    // Checkpoint the WAL so the copy holds everything.
    sql(&ledger, "PRAGMA wal_checkpoint(TRUNCATE);");
    std::fs::copy(&ledger, &pristine).unwrap();
    sql(&ledger, tamper);
    let output = pipeline(work, server, &["audit", "verify"]);
    std::fs::copy(&pristine, &ledger).unwrap();
    let _ = std::fs::remove_file(work.join(".baton/ledger.db-wal"));
    let _ = std::fs::remove_file(work.join(".baton/ledger.db-shm"));
    (output.status.success(), output_text(&output))
}

#[test]
fn runs_are_audited_and_tampering_is_found() {
    let server = HttpServer::serve(&green_data_dir());
    let work = tempfile::tempdir().unwrap();
    for month in ["2021-01", "2021-02", "2021-01"] {
        let output = pipeline(work.path(), &server, &["run", "--partition", month]);
        assert!(output.status.success(), "{}", output_text(&output));
    }
    let ledger = work.path().join(".baton/ledger.db");

    let output = pipeline(work.path(), &server, &["audit", "verify"]);
    let text = output_text(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("audit trail intact: 6 entries"), "{text}");

    // Who, what version, and what each block produced.
    let starts = sqlite_rows(
        &ledger,
        "SELECT actor || ' ' || json_extract(detail, '$.partition') || ' ' || \
         json_extract(detail, '$.version') || ' ' || length(json_extract(detail, '$.git_commit')) \
         FROM baton_audit WHERE event = 'run_started' ORDER BY seq",
    );
    assert_eq!(starts.len(), 3);
    let version = sqlite_rows(&ledger, "SELECT DISTINCT version FROM baton_runs");
    for (start, month) in starts.iter().zip(["2021-01", "2021-02", "2021-01"]) {
        assert!(start.starts_with("auditor@"), "{start}");
        assert!(
            start.ends_with(&format!(" {month} {} 40", version[0])),
            "{start}"
        );
    }
    let clean = sqlite_rows(
        &ledger,
        "SELECT json_extract(b.value, '$.rows_out') || ' ' || json_extract(b.value, '$.checksum') \
         FROM baton_audit a, json_each(json_extract(a.detail, '$.blocks')) b \
         WHERE a.event = 'run_finished' AND json_extract(b.value, '$.block') = 'clean_green_taxi' \
         ORDER BY a.seq",
    );
    assert_eq!(clean.len(), 3, "{clean:?}");
    assert!(clean[0].starts_with("38324 blake3-columns:"), "{clean:?}");
    // The same month loaded again produced exactly the same rows; another month did not.
    assert_eq!(clean[0], clean[2]);
    assert_ne!(clean[0], clean[1]);
    // The source is recorded by the bytes of the file it downloaded: the checksum is the one
    // computed here from the file on disk and its URL.
    let extract = sqlite_rows(
        &ledger,
        "SELECT json_extract(b.value, '$.checksum') \
         FROM baton_audit a, json_each(json_extract(a.detail, '$.blocks')) b \
         WHERE a.event = 'run_finished' AND json_extract(b.value, '$.block') = 'extract_green_taxi' \
         ORDER BY a.seq",
    );
    let file = green_data_dir().join("green_tripdata_2021-01.csv.gz");
    let expected = baton_runtime::audit::files_checksum(&[(
        format!("{}/green_tripdata_2021-01.csv.gz", server.url),
        blake3::hash(&std::fs::read(file).unwrap())
            .to_hex()
            .to_string(),
    )]);
    assert_eq!(extract[0], expected);
    assert_eq!(extract[2], expected);
    assert_ne!(extract[1], expected);

    // An edited entry.
    let (ok, report) = verify_after(
        work.path(),
        &server,
        "UPDATE baton_audit SET detail = replace(detail, '38324', '38000') WHERE seq = 2;",
    );
    assert!(!ok, "{report}");
    assert!(
        report.contains("entry 2 (run_finished of run") && report.contains("was changed"),
        "{report}"
    );
    // A removed entry in the middle.
    let (ok, report) = verify_after(
        work.path(),
        &server,
        "DELETE FROM baton_audit WHERE seq = 3;",
    );
    assert!(!ok);
    assert!(report.contains("entries 3..3 are missing"), "{report}");
    // A cut-off tail: the last run has no end on record any more.
    let (ok, report) = verify_after(
        work.path(),
        &server,
        "DELETE FROM baton_audit WHERE seq = 6;",
    );
    assert!(!ok);
    assert!(report.contains("has no `run_finished` entry"), "{report}");
    // A run's outcome rewritten behind the trail's back.
    let (ok, report) = verify_after(
        work.path(),
        &server,
        "UPDATE baton_runs SET status = 'failed' WHERE partition_key = '2021-02';",
    );
    assert!(!ok);
    assert!(
        report.contains("is recorded as failed, but the audit trail says it \"succeeded\""),
        "{report}"
    );
    // An entry forged with a recomputed hash still breaks the link to its successor.
    let (ok, report) = verify_after(
        work.path(),
        &server,
        "UPDATE baton_audit SET actor = 'someone-else', hash = 'f00d' WHERE seq = 1;",
    );
    assert!(!ok);
    assert!(report.contains("entry 2 does not chain"), "{report}");

    // Back to the original: intact again.
    let output = pipeline(work.path(), &server, &["audit", "verify"]);
    assert!(output.status.success(), "{}", output_text(&output));
    let listed = pipeline(work.path(), &server, &["audit", "list", "--limit", "2"]);
    let listed = output_text(&listed);
    assert!(listed.contains("#5 ") && listed.contains("#6 "), "{listed}");
    assert!(!listed.contains("#4 "), "{listed}");
    let first = sqlite_rows(&ledger, "SELECT run_id FROM baton_audit WHERE seq = 1");
    let of_run = pipeline(work.path(), &server, &["audit", "list", "--run", &first[0]]);
    let of_run = output_text(&of_run);
    assert!(of_run.contains("#1 ") && of_run.contains("#2 "), "{of_run}");
    assert_eq!(of_run.matches("\n#").count() + 1, 2, "{of_run}");
}
