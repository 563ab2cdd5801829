//! The service's rules, driven through its HTTP handler without sockets.

use std::sync::Arc;

use dialtone_http::{Handler, HeaderMap, Method, Request, StatusCode};

use crate::*;

const ADMIN: &str = "admin-token-0123456789";

/// A scratch redb file, removed when dropped.
struct TempDb(std::path::PathBuf);

impl TempDb {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "dialtone-preprov-{}-{}.redb",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `scenario` against the in-memory registry and against redb: both must behave the same.
fn each_registry(scenario: impl Fn(Service)) {
    scenario(service_on(Arc::new(MemoryRegistry::default())));
    let db = TempDb::new();
    scenario(service_on(Arc::new(RedbRegistry::open(&db.0).expect("open redb registry"))));
}

fn service_on(registry: Arc<dyn Registry>) -> Service {
    Service::new(
        registry,
        ServiceSettings {
            admin_token: Some(ADMIN.into()),
            rate_per_source: 1000,
            burst_per_source: 1000,
            next_servers: vec!["https://prov-next.example.net/".into()],
            class_parameters: [(
                "softphone".to_owned(),
                [("codecs".to_owned(), "OPUS".to_owned()), ("sip_registrar".to_owned(), "sip.example".to_owned())]
                    .into(),
            )]
            .into(),
        },
    )
}

fn call(svc: &Service, method: Method, path: &str, token: Option<&str>, body: &str) -> (StatusCode, String) {
    call_from(svc, method, path, token, body, "198.51.100.1:5000", None)
}

fn call_from(
    svc: &Service,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
    peer: &str,
    accept: Option<&str>,
) -> (StatusCode, String) {
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        headers.insert("authorization", format!("Bearer {t}").parse().expect("header"));
    }
    if let Some(a) = accept {
        headers.insert("accept", a.parse().expect("header"));
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path.to_owned(), None),
    };
    let req = Request { method, path, query, headers, body: body.to_owned().into(), peer: peer.parse().expect("peer") };
    let r = svc.handle(&req);
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// Creates an account and returns its token.
fn account(svc: &Service, name: &str, role: &str, default_contact: Option<&str>) -> String {
    let dc = default_contact.map_or(String::new(), |c| format!(",\"default_contact\":\"{c}\""));
    let (status, body) = call(
        svc,
        Method::POST,
        "/v1/accounts",
        Some(ADMIN),
        &format!("{{\"name\":\"{name}\",\"role\":\"{role}\"{dc}}}"),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["token"].as_str().expect("token").to_owned()
}

#[test]
fn management_needs_a_valid_token() {
    each_registry(|svc| {
        let svc = &svc;
        assert_eq!(call(svc, Method::GET, "/v1/devices", None, "").0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(svc, Method::GET, "/v1/devices", Some("not-a-token"), "").0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(svc, Method::PUT, "/v1/devices/805ec0000001", None, "{}").0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(svc, Method::GET, "/v1/devices", Some(ADMIN), "").0, StatusCode::OK);
    });
}

#[test]
fn entities_are_kept_apart() {
    each_registry(|svc| {
        let svc = &svc;
        let a = account(svc, "acme", "entity", None);
        let b = account(svc, "globex", "entity", None);
        let (s, body) = call(
            svc,
            Method::PUT,
            "/v1/devices/80:5e:c0:00:00:01",
            Some(&a),
            r#"{"contact":"prov.acme.example:8081"}"#,
        );
        assert_eq!(s, StatusCode::CREATED, "{body}");
        assert!(body.contains("\"device_id\":\"805ec0000001\""), "{body}");

        // B cannot read, change, delete or list A's device, and the answer is the one for a device that
        // does not exist at all.
        let absent = call(svc, Method::GET, "/v1/devices/805ec0ffffff", Some(&b), "");
        assert_eq!(call(svc, Method::GET, "/v1/devices/805ec0000001", Some(&b), ""), absent);
        assert_eq!(
            call(svc, Method::DELETE, "/v1/devices/805ec0000001", Some(&b), ""),
            call(svc, Method::DELETE, "/v1/devices/805ec0ffffff", Some(&b), "")
        );
        assert_eq!(
            call(svc, Method::GET, "/v1/devices/805ec0000001/parameters", Some(&b), ""),
            call(svc, Method::GET, "/v1/devices/805ec0ffffff/parameters", Some(&b), "")
        );
        let (s, body) = call(svc, Method::PUT, "/v1/devices/805ec0000001", Some(&b), r#"{"contact":"evil.example"}"#);
        assert_eq!(s, StatusCode::CONFLICT);
        assert!(!body.contains("acme"), "the refusal must not name the owner: {body}");
        let (_, list) = call(svc, Method::GET, "/v1/devices", Some(&b), "");
        assert_eq!(list, "{\"devices\":[],\"next\":null}\n");
        let (_, export) = call(svc, Method::GET, "/v1/bulk/devices", Some(&b), "");
        assert!(!export.contains("805ec0000001"));
        // The phone still gets A's contact.
        let (s, body) = call(svc, Method::GET, "/v1/contact/805ec0000001", None, "");
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("\"contact\":\"prov.acme.example:8081\""), "{body}");
        // A can delete its own.
        assert_eq!(call(svc, Method::DELETE, "/v1/devices/805ec0000001", Some(&a), "").0, StatusCode::NO_CONTENT);
        assert_eq!(call(svc, Method::GET, "/v1/contact/805ec0000001", None, "").0, StatusCode::NOT_FOUND);
    });
}

#[test]
fn point_of_sale_assigns_devices_to_a_named_entity() {
    each_registry(|svc| {
        let svc = &svc;
        let acme = account(svc, "acme", "entity", Some("prov.acme.example"));
        let globex = account(svc, "globex", "entity", Some("203.0.113.20:8081"));
        let pos = account(svc, "shop-17", "point-of-sale", None);
        // Claim 000: 6: the point of sale names the entity; the contact defaults to the entity's.
        let (s, body) = call(svc, Method::PUT, "/v1/devices/SN-T54W-0042", Some(&pos), r#"{"entity":"acme"}"#);
        assert_eq!(s, StatusCode::CREATED, "{body}");
        let (s, body) = call(svc, Method::GET, "/v1/devices/SN-T54W-0042", Some(&acme), "");
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("prov.acme.example"), "{body}");
        // A point of sale may transfer; an entity may not take over.
        let (s, _) = call(svc, Method::PUT, "/v1/devices/SN-T54W-0042", Some(&pos), r#"{"entity":"globex"}"#);
        assert_eq!(s, StatusCode::OK);
        assert_eq!(call(svc, Method::GET, "/v1/devices/SN-T54W-0042", Some(&acme), "").0, StatusCode::NOT_FOUND);
        let (_, body) = call(svc, Method::GET, "/v1/contact/SN-T54W-0042", None, "");
        assert!(body.contains("203.0.113.20:8081"), "{body}");
        // A point of sale reads nothing and names only entities.
        assert_eq!(call(svc, Method::GET, "/v1/devices", Some(&pos), "").0, StatusCode::FORBIDDEN);
        assert_eq!(call(svc, Method::GET, "/v1/devices/SN-T54W-0042", Some(&pos), "").0, StatusCode::NOT_FOUND);
        assert_eq!(
            call(svc, Method::PUT, "/v1/devices/SN-0043", Some(&pos), r#"{"entity":"shop-17"}"#).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(svc, Method::PUT, "/v1/devices/SN-0043", Some(&pos), r#"{"contact":"x.example"}"#).0,
            StatusCode::BAD_REQUEST
        );
        // Only the admin manages accounts.
        assert_eq!(
            call(svc, Method::POST, "/v1/accounts", Some(&globex), r#"{"name":"x","role":"admin"}"#).0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(call(svc, Method::GET, "/v1/accounts", Some(&pos), "").0, StatusCode::FORBIDDEN);
        // Every change is audited; an entity sees only its own lines.
        let (_, all) = call(svc, Method::GET, "/v1/audit", Some(ADMIN), "");
        assert!(
            all.contains("device.create") && all.contains("device.transfer") && all.contains("account.create"),
            "{all}"
        );
        let (_, own) = call(svc, Method::GET, "/v1/audit", Some(&acme), "");
        assert!(own.contains("device.create") && !own.contains("device.transfer"), "{own}");
    });
}

#[test]
fn malformed_input_is_a_400_with_a_message_and_changes_nothing() {
    each_registry(|svc| {
        let svc = &svc;
        let a = account(svc, "acme", "entity", None);
        let (s, body) = call(svc, Method::GET, "/v1/contact/not%20an%20id", None, "");
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        for (path, body) in [
            ("/v1/devices/x", r#"{"contact":"prov.example"}"#),
            ("/v1/devices/805ec0000001", r#"{"contact":"203.0.113.1"}"#),
            ("/v1/devices/805ec0000001", r#"{"contact":"bad_host!"}"#),
            ("/v1/devices/805ec0000001", r#"{"contact":"prov.example","extra":1}"#),
            ("/v1/devices/805ec0000001", "not json"),
        ] {
            let (s, msg) = call(svc, Method::PUT, path, Some(&a), body);
            assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {body}: {msg}");
            assert!(msg.contains("\"error\""), "{msg}");
        }
        let (_, list) = call(svc, Method::GET, "/v1/devices", Some(&a), "");
        assert_eq!(list, "{\"devices\":[],\"next\":null}\n");
    });
}

#[test]
fn contact_answers_json_or_one_text_line() {
    each_registry(|svc| {
        let svc = &svc;
        let a = account(svc, "acme", "entity", None);
        call(svc, Method::PUT, "/v1/devices/805ec0000009", Some(&a), r#"{"contact":"203.0.113.10:8081"}"#);
        let (_, json) = call(svc, Method::GET, "/v1/contact/80-5E-C0-00-00-09", None, "");
        assert_eq!(
            json,
            "{\"device_id\":\"805ec0000009\",\"contact\":\"203.0.113.10:8081\",\"host\":\"203.0.113.10\",\"port\":8081}\n"
        );
        let (_, text) =
            call_from(svc, Method::GET, "/v1/contact/805ec0000009", None, "", "198.51.100.1:1", Some("text/plain"));
        assert_eq!(text, "203.0.113.10:8081\n");
    });
}

#[test]
fn inquiries_are_rate_limited_per_source() {
    let svc = Service::new(
        Arc::new(MemoryRegistry::default()),
        ServiceSettings { rate_per_source: 1, burst_per_source: 3, ..ServiceSettings::default() },
    );
    let statuses: Vec<StatusCode> = (0..5)
        .map(|_| call_from(&svc, Method::GET, "/v1/contact/805ec0000001", None, "", "192.0.2.9:1", None).0)
        .collect();
    assert_eq!(statuses.iter().filter(|&&s| s == StatusCode::TOO_MANY_REQUESTS).count(), 2, "{statuses:?}");
    // Another source is not affected.
    assert_eq!(
        call_from(&svc, Method::GET, "/v1/contact/805ec0000001", None, "", "192.0.2.10:1", None).0,
        StatusCode::NOT_FOUND
    );
    assert!(svc.counters().render().contains("result=\"rate_limited\"} 2"));
}

#[test]
fn bulk_import_reports_bad_rows_by_line_and_export_round_trips() {
    each_registry(|svc| {
        let svc = &svc;
        let a = account(svc, "acme", "entity", None);
        let csv = "device_id,contact\n805ec0000001,prov.acme.example\n# a comment\nbad id,prov.acme.example\n805ec0000002,203.0.113.1\n805ec0000003,203.0.113.1:80\n805ec0000001,prov2.acme.example:8443\n";
        let (s, body) = call(svc, Method::POST, "/v1/bulk/devices", Some(&a), csv);
        assert_eq!(s, StatusCode::MULTI_STATUS, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!((v["created"].as_u64(), v["updated"].as_u64()), (Some(2), Some(1)), "{body}");
        let lines: Vec<u64> =
            v["rejected"].as_array().expect("array").iter().filter_map(|r| r["line"].as_u64()).collect();
        assert_eq!(lines, vec![4, 5], "{body}");
        let (_, export) = call(svc, Method::GET, "/v1/bulk/devices", Some(&a), "");
        assert_eq!(
            export,
            "device_id,contact,entity\n805ec0000001,prov2.acme.example:8443,acme\n805ec0000003,203.0.113.1:80,acme\n"
        );
    });
}

#[test]
fn listing_is_paginated() {
    each_registry(|svc| {
        let svc = &svc;
        let a = account(svc, "acme", "entity", None);
        let csv: String = (0..25).map(|i| format!("805ec00000{i:02},prov.acme.example\n")).collect();
        assert_eq!(call(svc, Method::POST, "/v1/bulk/devices", Some(&a), &csv).0, StatusCode::OK);
        let mut after = String::new();
        let mut seen = 0;
        loop {
            let (_, body) = call(svc, Method::GET, &format!("/v1/devices?limit=10{after}"), Some(&a), "");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            seen += v["devices"].as_array().map_or(0, Vec::len);
            match v["next"].as_str() {
                Some(n) => after = format!("&after={n}"),
                None => break,
            }
        }
        assert_eq!(seen, 25);
    });
}

#[test]
fn provisioning_entry_point_merges_class_template_or_names_next_servers() {
    each_registry(|svc| {
        let svc = &svc;
        let a = account(svc, "acme", "entity", None);
        call(svc, Method::PUT, "/v1/devices/805ec0000001", Some(&a), r#"{"contact":"prov.acme.example"}"#);
        let (_, body) = call(svc, Method::GET, "/v1/provision/805ec0000001", None, "");
        assert!(body.contains("next_servers") && body.contains("prov-next.example.net"), "{body}");
        let (s, _) = call(
            svc,
            Method::PUT,
            "/v1/devices/805ec0000001/parameters",
            Some(&a),
            r#"{"class":"softphone","sip_account":"1001","codecs":"G722"}"#,
        );
        assert_eq!(s, StatusCode::OK);
        let (_, body) = call(svc, Method::GET, "/v1/provision/805ec0000001", None, "");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["parameters"]["sip_registrar"], "sip.example");
        assert_eq!(v["parameters"]["sip_account"], "1001");
        assert_eq!(v["parameters"]["codecs"], "G722", "per-device values override the class template");
    });
}

#[test]
fn account_names_are_unique_and_deletion_keeps_devices_safe() {
    each_registry(|svc| {
        let svc = &svc;
        let a = account(svc, "acme", "entity", None);
        assert_eq!(
            call(svc, Method::POST, "/v1/accounts", Some(ADMIN), r#"{"name":"acme","role":"entity"}"#).0,
            StatusCode::CONFLICT
        );
        call(svc, Method::PUT, "/v1/devices/805ec0000001", Some(&a), r#"{"contact":"prov.acme.example"}"#);
        assert_eq!(call(svc, Method::DELETE, "/v1/accounts/acme", Some(ADMIN), "").0, StatusCode::CONFLICT);
        assert_eq!(call(svc, Method::DELETE, "/v1/devices/805ec0000001", Some(&a), "").0, StatusCode::NO_CONTENT);
        assert_eq!(call(svc, Method::DELETE, "/v1/accounts/acme", Some(ADMIN), "").0, StatusCode::NO_CONTENT);
        // Its token no longer works.
        assert_eq!(call(svc, Method::GET, "/v1/devices", Some(&a), "").0, StatusCode::UNAUTHORIZED);
    });
}

#[test]
fn registered_data_survives_a_restart() {
    let db = TempDb::new();
    let token = {
        let svc = service_on(Arc::new(RedbRegistry::open(&db.0).expect("open")));
        let token = account(&svc, "acme", "entity", None);
        let (s, _) = call(
            &svc,
            Method::PUT,
            "/v1/devices/805ec0000077",
            Some(&token),
            r#"{"contact":"prov.acme.example:8081"}"#,
        );
        assert_eq!(s, StatusCode::CREATED);
        token
    };
    let svc = service_on(Arc::new(RedbRegistry::open(&db.0).expect("reopen")));
    let (s, body) = call(&svc, Method::GET, "/v1/contact/805ec0000077", None, "");
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("prov.acme.example:8081"), "{body}");
    assert_eq!(call(&svc, Method::GET, "/v1/devices/805ec0000077", Some(&token), "").0, StatusCode::OK);
    let (_, audit) = call(&svc, Method::GET, "/v1/audit", Some(ADMIN), "");
    assert!(audit.contains("\"seq\":1") && audit.contains("\"seq\":2"), "{audit}");
}
