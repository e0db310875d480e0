//! restapi security: Basic auth and allowlists on the unsafe endpoints (router level), and
//! HTTPS with optional/required client certificates on a real listener, driven with curl
//! and certificates made by the openssl CLI.

mod api_common;

use api_common::*;
use axum::http::Method;
use patroni::api::{ApiState, router, serve_tls, tls_acceptor};
use patroni::command::{CommandReply, NodeCommand};
use patroni::config::RestApiConfig;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

const AUTH: &str = "Basic YWRtaW46czNjcmV0"; // admin:s3cret

fn with_config(env: &Env, restapi: serde_json::Value) -> axum::Router {
    router(ApiState {
        config: Some(local_config(restapi)),
        ..env.state.clone()
    })
}

#[tokio::test]
async fn basic_auth_guards_only_unsafe_endpoints() {
    let env = Env::new();
    let app = with_config(
        &env,
        json!({"listen":"127.0.0.1:8008","authentication":{"username":"admin","password":"s3cret"}}),
    );
    for path in ["/patroni", "/primary", "/config", "/metrics", "/cluster"] {
        let r = call(Method::GET, path).send(&app).await;
        assert_eq!(
            r.status.as_u16(),
            200,
            "GET {path} stays open: {}",
            r.text()
        );
    }
    let r = call(Method::POST, "/restart").send(&app).await;
    r.expect(401, "no auth header received");
    assert_eq!(
        r.headers.get("www-authenticate").unwrap(),
        "Basic realm=\"Patroni\""
    );
    for bad in [
        "Basic YWRtaW46d3Jvbmc=",
        "Basic !!!",
        "Bearer s3cret",
        "Basic YWRtaW46czNjcmV0eA==",
    ] {
        for (m, p) in [
            (Method::POST, "/restart"),
            (Method::PATCH, "/config"),
            (Method::DELETE, "/switchover"),
            (Method::PUT, "/config"),
        ] {
            let r = call(m.clone(), p)
                .header("authorization", bad)
                .body("{\"a\":1}")
                .send(&app)
                .await;
            r.expect(401, "not authenticated");
            assert!(!r.text().contains("s3cret"));
        }
    }
    // With the right credentials the request reaches the handler.
    call(Method::POST, "/restart")
        .header("authorization", AUTH)
        .send(&app)
        .await
        .expect(503, "does not accept restart/reinitialize commands");
    let r = call(Method::PATCH, "/config")
        .header("authorization", AUTH)
        .body(r#"{"loop_wait":5}"#)
        .send(&app)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
}

#[tokio::test]
async fn allowlist_and_members() {
    let env = Env::new();
    let app = with_config(
        &env,
        json!({"listen":"127.0.0.1:8008","allowlist":["10.0.0.0/8","localhost","192.168.7.7"],
               "authentication":{"username":"admin","password":"s3cret"}}),
    );
    let reload = |ip: Option<&str>| {
        let c = call(Method::POST, "/reload").header("authorization", AUTH);
        match ip {
            Some(ip) => c.from(ip, false),
            None => c,
        }
    };
    reload(Some("192.168.1.5"))
        .send(&app)
        .await
        .expect(403, "Access is denied");
    reload(None)
        .send(&app)
        .await
        .expect(403, "Access is denied");
    for ip in ["10.2.3.4", "127.0.0.1", "192.168.7.7", "::ffff:10.9.9.9"] {
        // Allowed through the guard: the handler says it cannot reload.
        reload(Some(ip))
            .send(&app)
            .await
            .expect(503, "cannot reload");
    }
    // The allowlist comes before authentication.
    call(Method::POST, "/reload")
        .from("192.168.1.5", false)
        .send(&app)
        .await
        .expect(403, "Access is denied");
    call(Method::POST, "/reload")
        .from("10.0.0.1", false)
        .send(&app)
        .await
        .expect(401, "no auth header");
    // Health checks are not subject to the allowlist.
    let r = call(Method::GET, "/primary")
        .from("192.168.1.5", false)
        .send(&app)
        .await;
    assert_eq!(r.status.as_u16(), 200);

    // Members' REST addresses (127.0.0.1 in the seeded cluster) only.
    let app = with_config(
        &env,
        json!({"listen":"127.0.0.1:8008","allowlist_include_members":"on"}),
    );
    call(Method::POST, "/reload")
        .from("127.0.0.1", false)
        .send(&app)
        .await
        .expect(503, "cannot reload");
    call(Method::POST, "/reload")
        .from("10.0.0.1", false)
        .send(&app)
        .await
        .expect(403, "Access is denied");
}

/// CA, server (127.0.0.1) and client certificates in a temp dir, made by openssl.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        for (name, usage, san) in [
            ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
            ("client", "clientAuth", ""),
        ] {
            run(&[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat());
            std::fs::write(
                dir.path().join(format!("{name}.ext")),
                format!("{san}basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"),
            )
            .unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        Pki { dir }
    }
    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }
}

struct TlsServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TlsServer {
    async fn start(env: &Env, restapi: serde_json::Value) -> TlsServer {
        let api: RestApiConfig = serde_json::from_value(restapi.clone()).unwrap();
        let acceptor = tls_acceptor(&api)
            .expect("TLS settings")
            .expect("certfile set");
        let (tx, rx) = patroni::command::channel();
        fake_loop(rx, |c| match c {
            NodeCommand::Restart(..) => Some(CommandReply::Done("restarted successfully".into())),
            _ => None,
        });
        let state = ApiState {
            config: Some(local_config(restapi)),
            commands: Some(tx),
            ..env.state.clone()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_tls(listener, acceptor, state, async move {
            let _ = stop_rx.await;
        }));
        TlsServer {
            port,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let res = tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.task)
            .await
            .expect("TLS server stops");
        assert!(res.unwrap().is_ok());
    }
}

/// curl's exit code and `(status, body)` when it got an answer.
async fn curl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (
        out.status.code().unwrap_or(-1),
        code.to_string(),
        body.to_string(),
    )
}

fn restapi(pki: &Pki, verify: &str) -> serde_json::Value {
    json!({"listen":"127.0.0.1:0","certfile":pki.path("server.crt"),"keyfile":pki.path("server.key"),
           "cafile":pki.path("ca.crt"),"verify_client":verify,
           "authentication":{"username":"admin","password":"s3cret"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_basic_auth() {
    let env = Env::new();
    let pki = Pki::new();
    let srv = TlsServer::start(&env, restapi(&pki, "none")).await;
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", srv.port);
    let ca = pki.path("ca.crt");

    let (rc, code, body) = curl(&["--cacert", &ca, &url("/patroni")]).await;
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    assert!(body.contains("\"role\":\"primary\""), "{body}");
    let (_, code, _) = curl(&["--cacert", &ca, "-X", "OPTIONS", &url("/primary")]).await;
    assert_eq!(code, "200");

    let (_, code, body) = curl(&["--cacert", &ca, "-X", "POST", &url("/restart")]).await;
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("401", "no auth header received")
    );
    let (_, code, body) = curl(&[
        "--cacert",
        &ca,
        "-u",
        "admin:wrong",
        "-X",
        "POST",
        &url("/restart"),
    ])
    .await;
    assert_eq!((code.as_str(), body.as_str()), ("401", "not authenticated"));
    let (_, code, body) = curl(&[
        "--cacert",
        &ca,
        "-u",
        "admin:s3cret",
        "-X",
        "POST",
        &url("/restart"),
    ])
    .await;
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "restarted successfully")
    );

    // Unverified server certificate and plain HTTP both fail.
    let (rc, _, _) = curl(&[&url("/patroni")]).await;
    assert_ne!(rc, 0, "curl must reject a certificate from an unknown CA");
    let (_, code, _) = curl(&[&format!("http://127.0.0.1:{}/patroni", srv.port)]).await;
    assert_ne!(code, "200", "plain HTTP on the TLS port");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_optional_and_required() {
    let env = Env::new();
    let pki = Pki::new();
    let (ca, cert, key) = (
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );

    let srv = TlsServer::start(&env, restapi(&pki, "optional")).await;
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", srv.port);
    let (_, code, _) = curl(&["--cacert", &ca, &url("/patroni")]).await;
    assert_eq!(code, "200", "safe endpoints need no client certificate");
    let (_, code, body) = curl(&[
        "--cacert",
        &ca,
        "-u",
        "admin:s3cret",
        "-X",
        "POST",
        &url("/restart"),
    ])
    .await;
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("403", "client certificate required")
    );
    let (_, code, body) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "-u",
        "admin:s3cret",
        "-X",
        "POST",
        &url("/restart"),
    ])
    .await;
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "restarted successfully")
    );
    srv.stop().await;

    let srv = TlsServer::start(&env, restapi(&pki, "required")).await;
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", srv.port);
    let (rc, code, _) = curl(&["--cacert", &ca, &url("/patroni")]).await;
    assert!(
        rc != 0 || code != "200",
        "required: no certificate, no answer"
    );
    let (_, code, _) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        &url("/patroni"),
    ])
    .await;
    assert_eq!(code, "200");
    // A certificate the CA did not sign is refused in the handshake.
    let (rc, code, _) = curl(&[
        "--cacert",
        &ca,
        "--cert",
        &pki.path("server.crt"),
        "--key",
        &pki.path("server.key"),
        &url("/patroni"),
    ])
    .await;
    assert!(
        rc != 0 || code != "200",
        "a server-usage certificate is not a client certificate"
    );
    srv.stop().await;
}

#[test]
fn tls_settings_errors_are_clear() {
    let pki = Pki::new();
    let api = |v: serde_json::Value| -> RestApiConfig { serde_json::from_value(v).unwrap() };
    let err = |v| tls_acceptor(&api(v)).err().expect("an error").to_string();
    assert!(
        tls_acceptor(&api(json!({"listen":"x"}))).unwrap().is_none(),
        "no certfile: plain HTTP"
    );
    let missing = err(json!({"certfile":"/nonexistent/server.crt"}));
    assert!(missing.contains("/nonexistent/server.crt"), "{missing}");
    let no_ca = err(
        json!({"certfile":pki.path("server.crt"),"keyfile":pki.path("server.key"),"verify_client":"required"}),
    );
    assert!(no_ca.contains("cafile"), "{no_ca}");
    let bad = err(
        json!({"certfile":pki.path("server.crt"),"keyfile":pki.path("server.key"),"verify_client":"sometimes"}),
    );
    assert!(bad.contains("none, optional or required"), "{bad}");
    let no_key = err(json!({"certfile":pki.path("server.crt")}));
    assert!(no_key.contains("private key"), "{no_key}");
    let enc = Path::new(&pki.path("enc.key")).to_path_buf();
    let out = Command::new("openssl")
        .args([
            "pkey",
            "-in",
            &pki.path("server.key"),
            "-aes256",
            "-passout",
            "pass:pw",
            "-out",
        ])
        .arg(&enc)
        .output()
        .unwrap();
    assert!(out.status.success());
    let msg = err(json!({"certfile":pki.path("server.crt"),"keyfile":enc,"keyfile_password":"pw"}));
    assert!(msg.contains("encrypted") && !msg.contains("pw\""), "{msg}");
    let _: PathBuf = enc;
}
