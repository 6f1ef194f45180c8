//! The Socket.IO endpoint (`/socket.io/`, docs/socketio.md) spoken by hand: Engine.IO v4
//! over WebSocket (the raw protocol load generators speak), HTTP long-polling and its
//! upgrade, and bad input of every kind answered clearly without disturbing anyone else.
//! The real `socket.io-client` and `python-socketio` run in tests/socketio.

#![allow(clippy::unwrap_used, missing_docs)]

mod fixture;

use std::{net::SocketAddr, time::Duration};

use fixture::{
    cluster::{start_nodes, SERIAL},
    config, connect_url, token, TestServer, WAIT,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard_protocol::{Code, Encoding};
use switchboard_testkit::{Persistence, RedisServer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A Socket.IO client speaking Engine.IO over a WebSocket, frame by frame.
struct RawSio {
    ws: Ws,
}

impl RawSio {
    async fn open(server: &TestServer, query: &str) -> (RawSio, Value) {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket{query}", server.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut client = RawSio { ws };
        let open = client.text().await;
        let open: Value =
            serde_json::from_str(open.strip_prefix('0').expect("an open packet first")).unwrap();
        (client, open)
    }

    /// Opens and connects to the root namespace with `user`'s token.
    async fn connected(server: &TestServer, user: &str) -> RawSio {
        let (mut client, _) = RawSio::open(server, "").await;
        client.send(&format!(r#"40{{"token":"{}"}}"#, token(user))).await;
        let reply = client.text().await;
        assert!(reply.starts_with(r#"40{"sid":""#), "{reply}");
        client
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next text frame, answering Engine.IO pings on the way.
    async fn text(&mut self) -> String {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("a frame in time") {
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => self.send("3").await,
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The arguments of the next event, with its name (join and leave events of the
    /// `open` namespace skipped).
    async fn event(&mut self) -> (String, Vec<Value>) {
        loop {
            let text = self.text().await;
            let array = text.strip_prefix("42").unwrap_or_else(|| panic!("an event, got {text}"));
            let mut items: Vec<Value> = serde_json::from_str(array).unwrap();
            let name = items.remove(0).as_str().unwrap().to_string();
            if name != "sb:join" && name != "sb:leave" {
                return (name, items);
            }
        }
    }

    /// Emits `name` with `argument` asking for ack `ack`, and returns the ack's argument.
    async fn call(&mut self, ack: u64, name: &str, argument: Value) -> Value {
        self.send(&format!("42{ack}{}", json!([name, argument]))).await;
        let mut text = self.text().await;
        while text.starts_with("42") {
            // Events (e.g. the caller's own publication) may come before the ack.
            text = self.text().await;
        }
        let args = text.strip_prefix(&format!("43{ack}")).unwrap_or_else(|| panic!("ack {ack}, got {text}"));
        let mut args: Vec<Value> = serde_json::from_str(args).unwrap();
        assert_eq!(args.len(), 1, "{text}");
        args.remove(0)
    }

    /// Reads until the server closes; returns the close code.
    async fn closed(&mut self) -> (Vec<String>, Option<u16>) {
        let mut texts = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("closed in time") {
                Some(Ok(Message::Text(text))) => texts.push(text.to_string()),
                Some(Ok(Message::Close(frame))) => return (texts, frame.map(|f| f.code.into())),
                None | Some(Err(_)) => return (texts, None),
                Some(Ok(_)) => {}
            }
        }
    }
}

fn socketio_config() -> switchboard_gateway::config::Config {
    let mut config = config();
    config.socketio.ping_interval_ms = 300;
    config.socketio.ping_timeout_ms = 2_000;
    config
}

#[tokio::test]
async fn raw_engineio_websocket_client_works() {
    let server = TestServer::start(socketio_config()).await;
    let (mut client, open) = RawSio::open(&server, "").await;
    assert_eq!(open["upgrades"], json!([]), "{open}");
    assert_eq!(open["pingInterval"], json!(300));
    assert!(open["sid"].as_str().unwrap().starts_with(&server.node.id));
    // Nothing but pings before the CONNECT reply (what raw load generators expect).
    client.send(&format!(r#"40{{"token":"{}"}}"#, token("alice"))).await;
    let reply = client.text().await;
    let reply: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(reply["sid"], open["sid"]);
    let subscribed = client.call(0, "subscribe", json!("open:room")).await;
    assert_eq!(subscribed["channel"], "open:room");
    // A native client in the same channel: both see the same publications, in order.
    let mut native = server.connect("bob", Encoding::Json).await;
    native.ok("subscribe", json!({"channel": "open:room"})).await;
    for n in 0..5 {
        if n % 2 == 0 {
            native.ok("publish", json!({"channel": "open:room", "event": "tick", "data": {"n": n}})).await;
        } else {
            server.backend_publish("open:room", "tick", json!({"n": n})).await;
        }
    }
    for n in 0..5 {
        let (name, args) = client.event().await;
        assert_eq!((name.as_str(), &args[..]), ("tick", &[json!({"n": n})][..]));
        assert_eq!(native.publication().await.data, json!({"n": n}));
    }
    // A publication without an event is a `message`; the client's own ping is answered.
    server.backend_publish("open:room", "", json!("plain")).await;
    client.send("2").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let text = client.text().await;
        if !text.starts_with(r#"42["sb:"#) {
            seen.push(text);
        }
    }
    assert!(seen.contains(&"3".to_string()), "{seen:?}");
    // Heartbeats keep an answering client connected past several ping intervals.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let published = client.call(1, "publish", json!({"channel": "open:room", "data": 1})).await;
    assert!(published["offset"].as_u64().is_some(), "{published}");
    server.shutdown().await;
}

#[tokio::test]
async fn events_route_to_builtins_rules_and_rpc() {
    let mut config = socketio_config();
    config.socketio.namespaces.push(switchboard_gateway::config::SocketIoNamespace {
        name: "/admin".into(),
        prefix: "open:admin-".into(),
        recovery: false,
    });
    config.socketio.events.push(switchboard_gateway::config::SocketIoEventRule {
        event: Some("typing".into()),
        action: switchboard_gateway::config::EventAction::Publish,
        channel: Some("open:typing".into()),
        ..Default::default()
    });
    let server = TestServer::start(config).await;
    let mut native = server.connect("bob", Encoding::Json).await;
    native.ok("subscribe", json!({"channel": "open:typing"})).await;
    native.ok("subscribe", json!({"channel": "open:admin-alerts"})).await;
    // A namespace maps rooms to prefixed channels.
    let (mut admin, _) = RawSio::open(&server, "").await;
    admin.send(&format!(r#"40/admin,{{"token":"{}"}}"#, token("carol"))).await;
    assert!(admin.text().await.starts_with(r#"40/admin,{"sid":"#));
    admin.send(r#"42/admin,1["subscribe",{"channel":"alerts"}]"#).await;
    let ack = admin.text().await;
    assert!(ack.starts_with(r#"43/admin,1[{"channel":"open:admin-alerts""#), "{ack}");
    admin.send(r#"42/admin,["publish",{"channel":"alerts","event":"alert","data":"hot"}]"#).await;
    let publication = native.publication().await;
    assert_eq!(
        (publication.channel.as_str(), publication.event.as_deref()),
        ("open:admin-alerts", Some("alert"))
    );
    let (name, args) = loop {
        let text = admin.text().await;
        let body = text.strip_prefix("42/admin,").unwrap().to_string();
        let mut items: Vec<Value> = serde_json::from_str(&body).unwrap();
        let name = items.remove(0);
        if name != json!("sb:join") {
            break (name, items);
        }
    };
    assert_eq!((name, args), (json!("alert"), vec![json!("hot")]));
    // A rule: `typing` publishes its argument into a fixed channel.
    let mut client = RawSio::connected(&server, "alice").await;
    client.send(r#"42["typing",{"who":"alice"}]"#).await;
    let typing = native.publication().await;
    assert_eq!((typing.event.as_deref(), typing.data), (Some("typing"), json!({"who": "alice"})));
    // Anything else is an rpc named after the event: no route here, a clear error.
    let error = client.call(7, "cast_vote", json!({"proposal": 1})).await;
    assert_eq!(error["error"]["code"], json!(Code::NoRoute.as_u16()), "{error}");
    // Bad built-in arguments name the event.
    let error = client.call(8, "subscribe", json!(5)).await;
    assert_eq!(error["error"]["code"], json!(Code::BadRequest.as_u16()), "{error}");
    // Without an ack, an error is an `sb:error` event.
    client.send(r#"42["history",{"channel":"private:x"}]"#).await;
    let (name, args) = client.event().await;
    assert_eq!(name, "sb:error");
    assert!(args[0]["code"].as_u64().is_some(), "{args:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn refused_connects_get_connect_error() {
    let server = TestServer::start(socketio_config()).await;
    // An unknown namespace: socket.io's own answer, and the connection stays usable.
    let (mut client, _) = RawSio::open(&server, "").await;
    client.send("40/nope,").await;
    assert_eq!(client.text().await, r#"44/nope,{"message":"Invalid namespace"}"#);
    // An event before CONNECT.
    client.send(r#"42["subscribe","open:x"]"#).await;
    let (name, args) = client.event().await;
    assert_eq!((name.as_str(), args[0]["code"].clone()), ("sb:error", json!(Code::NotConnected.as_u16())));
    // A bad token: CONNECT_ERROR with the code, then the close.
    client.send(r#"40{"token":"nope"}"#).await;
    let refusal = client.text().await;
    let refusal: Value = serde_json::from_str(refusal.strip_prefix("44").unwrap()).unwrap();
    assert!(refusal["message"].as_str().unwrap().contains("token"), "{refusal}");
    assert_eq!(refusal["data"]["code"], json!(Code::InvalidToken.as_u16()));
    let (_, code) = client.closed().await;
    assert_eq!(code, Some(Code::Unauthorized.as_u16()));
    // A second CONNECT on a connected socket.
    let mut twice = RawSio::connected(&server, "alice").await;
    twice.send(&format!(r#"40{{"token":"{}"}}"#, token("alice"))).await;
    let again = twice.text().await;
    assert!(again.starts_with(r#"44{"data":{"code":102}"#), "{again}");
    server.shutdown().await;
}

/// Sends `frame` on a connected Socket.IO client and expects a 3500 close, while a
/// bystander in the same channel keeps receiving publications.
async fn violation_closes(server: &TestServer, frame: Message) {
    let mut bystander = RawSio::connected(server, "bystander").await;
    bystander.call(0, "subscribe", json!("open:calm")).await;
    let mut offender = RawSio::connected(server, "offender").await;
    offender.ws.send(frame.clone()).await.unwrap();
    let (texts, code) = offender.closed().await;
    assert_eq!(code, Some(Code::ProtocolError.as_u16()), "{frame:?}: {texts:?}");
    assert!(texts.iter().any(|t| t.starts_with(r#"42["sb:disconnect""#)), "{texts:?}");
    server.backend_publish("open:calm", "still", json!("here")).await;
    assert_eq!(bystander.event().await, ("still".to_string(), vec![json!("here")]));
}

#[tokio::test]
async fn malformed_packets_close_with_protocol_error() {
    let server = TestServer::start(socketio_config()).await;
    for frame in [
        "9hello",                   // unknown Engine.IO type
        "",                         // empty
        "47[]",                     // unknown Socket.IO type
        "42{\"not\":\"an array\"}", // event payload not an array
        "42[\"connect\"]",          // reserved event name
        "42[",                      // broken JSON
        "0{}",                      // clients do not send open packets
        "44{\"message\":\"x\"}",    // nor CONNECT_ERROR
    ] {
        violation_closes(&server, Message::Text(frame.into())).await;
    }
    violation_closes(&server, Message::Binary(vec![1, 2, 3].into())).await;
    server.shutdown().await;
}

#[tokio::test]
async fn binary_attachments_are_refused_and_skipped() {
    let server = TestServer::start(socketio_config()).await;
    let mut client = RawSio::connected(&server, "alice").await;
    client.send(r#"451-3["upload",{"_placeholder":true,"num":0}]"#).await;
    client.ws.send(Message::Binary(vec![0xde, 0xad].into())).await.unwrap();
    let refusal = client.text().await;
    assert!(refusal.starts_with(r#"433[{"error":{"code":103"#), "{refusal}");
    assert!(refusal.contains("binary attachments are not supported"), "{refusal}");
    // The attachment was skipped: the connection goes on.
    let subscribed = client.call(4, "subscribe", json!("open:after")).await;
    assert_eq!(subscribed["channel"], "open:after");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_handshakes_get_engineio_errors() {
    let server = TestServer::start(socketio_config()).await;
    let (status, body) = server.http_get("/socket.io/?EIO=3&transport=websocket").await;
    assert_eq!((status, body.as_str()), (400, r#"{"code":5,"message":"Unsupported protocol version"}"#));
    let (status, body) = server.http_get("/socket.io/?EIO=4&transport=pigeon").await;
    assert_eq!((status, body.as_str()), (400, r#"{"code":0,"message":"Transport unknown"}"#));
    let (status, body) = server.http_get("/socket.io/?EIO=4&transport=polling&sid=nope-1").await;
    assert_eq!((status, body.as_str()), (400, r#"{"code":1,"message":"Session ID unknown"}"#));
    let mut disabled = socketio_config();
    disabled.socketio.enabled = false;
    let off = TestServer::start(disabled).await;
    assert_eq!(off.http_get("/socket.io/?EIO=4&transport=polling").await.0, 404);
    off.shutdown().await;
    server.shutdown().await;
}

/// One HTTP/1.1 request on a new connection: status, headers (lowercase names), body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("a response in time").unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_string())
}

/// A polling client: its session id and the node's address.
struct Polling {
    addr: SocketAddr,
    sid: String,
}

impl Polling {
    async fn open(server: &TestServer) -> (Polling, Value) {
        let (status, _, body) =
            http(server.addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
        assert_eq!(status, 200, "{body}");
        let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
        (Polling { addr: server.addr, sid: open["sid"].as_str().unwrap().to_string() }, open)
    }

    fn path(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    async fn get(&self) -> Vec<String> {
        let (status, _, body) = http(self.addr, "GET", &self.path(), &[], "").await;
        assert_eq!(status, 200, "{body}");
        body.split('\u{1e}').map(str::to_string).collect()
    }

    async fn post(&self, packets: &[&str]) -> (u16, String) {
        let (status, _, body) = http(self.addr, "POST", &self.path(), &[], &packets.join("\u{1e}")).await;
        (status, body)
    }
}

#[tokio::test]
async fn polling_sessions_connect_emit_receive_and_upgrade() {
    let server = TestServer::start(socketio_config()).await;
    let (client, open) = Polling::open(&server).await;
    assert_eq!(open["upgrades"], json!(["websocket"]));
    let connect = format!(r#"40{{"token":"{}"}}"#, token("alice"));
    assert_eq!(client.post(&[&connect, r#"421["subscribe","open:poll"]"#]).await, (200, "ok".into()));
    let mut packets = Vec::new();
    while packets.len() < 2 {
        packets.extend(client.get().await.into_iter().filter(|p| p != "2"));
    }
    assert!(packets[0].starts_with(r#"40{"sid":""#), "{packets:?}");
    assert!(packets[1].starts_with(r#"431[{"channel":"open:poll""#), "{packets:?}");
    // A publication reaches a waiting poll.
    let poll = tokio::spawn({
        let client = Polling { addr: client.addr, sid: client.sid.clone() };
        async move {
            loop {
                let got: Vec<String> = client.get().await.into_iter().filter(|p| p != "2").collect();
                if !got.is_empty() {
                    return got;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.backend_publish("open:poll", "news", json!({"n": 1})).await;
    assert_eq!(poll.await.unwrap(), vec![r#"42["news",{"n":1}]"#.to_string()]);
    // The upgrade: probe, a pending poll answered with noop, then `5`.
    let pending = tokio::spawn({
        let client = Polling { addr: client.addr, sid: client.sid.clone() };
        async move { client.get().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket&sid={}", server.addr, client.sid);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut upgraded = RawSio { ws };
    upgraded.send("2probe").await;
    assert_eq!(upgraded.text().await, "3probe");
    let answered = pending.await.unwrap();
    assert!(answered == vec!["6".to_string()] || answered == vec!["2".to_string()], "{answered:?}");
    upgraded.send("5").await;
    server.backend_publish("open:poll", "news", json!({"n": 2})).await;
    assert_eq!(upgraded.event().await, ("news".to_string(), vec![json!({"n": 2})]));
    let again = upgraded.call(9, "unsubscribe", json!("open:poll")).await;
    assert!(again.is_object(), "{again}");
    // Polling that session now is refused.
    let (status, _, _) = http(server.addr, "GET", &client.path(), &[], "").await;
    assert_eq!(status, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn polling_bad_input_is_refused_clearly() {
    let mut config = socketio_config();
    config.limits.max_message_bytes = 4_096;
    config.limits.allowed_origins = vec!["https://app.example".into()];
    let server = TestServer::start(config).await;
    let mut bystander = RawSio::connected(&server, "bystander").await;
    bystander.call(0, "subscribe", json!("open:calm")).await;
    // CORS: an allowed origin is echoed (preflight included), another is refused.
    let origin = [("Origin", "https://app.example")];
    let (status, head, _) =
        http(server.addr, "OPTIONS", "/socket.io/?EIO=4&transport=polling", &origin, "").await;
    assert_eq!(status, 204);
    assert!(head.contains("access-control-allow-origin: https://app.example"), "{head}");
    assert!(head.contains("access-control-allow-methods"), "{head}");
    let (status, head, body) =
        http(server.addr, "GET", "/socket.io/?EIO=4&transport=polling", &origin, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("access-control-allow-credentials: true"), "{head}");
    let evil = [("Origin", "https://evil.example")];
    let (status, _, body) = http(server.addr, "GET", "/socket.io/?EIO=4&transport=polling", &evil, "").await;
    assert_eq!(status, 403, "{body}");
    // An oversized body: 413, with a JSON body.
    let (client, _) = Polling::open(&server).await;
    let big = format!(r#"42["x","{}"]"#, "a".repeat(5_000));
    let (status, body) = client.post(&[&big]).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("maxPayload"), "{body}");
    // Overlapping polls: the second is refused and the session closes (the first poll
    // ends with the close packet).
    let first = tokio::spawn({
        let client = Polling { addr: client.addr, sid: client.sid.clone() };
        async move { client.get().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, body) = http(server.addr, "GET", &client.path(), &[], "").await;
    assert_eq!(status, 400, "{body}");
    let ended = first.await.unwrap();
    assert_eq!(ended.last().map(String::as_str), Some("1"), "{ended:?}");
    // A malformed packet in a post closes that session only.
    let (other, _) = Polling::open(&server).await;
    assert_eq!(other.post(&["9garbage"]).await.0, 200);
    let closing = other.get().await;
    assert!(closing.iter().any(|p| p.starts_with(r#"42["sb:disconnect",{"code":3500"#)), "{closing:?}");
    assert_eq!(closing.last().map(String::as_str), Some("1"), "{closing:?}");
    server.backend_publish("open:calm", "still", json!("here")).await;
    assert_eq!(bystander.event().await, ("still".to_string(), vec![json!("here")]));
    server.shutdown().await;
}

/// A polling session opened on one node is served through another: polls and posts are
/// forwarded to the node that holds it, the upgrade is relayed, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_sessions_work_through_any_node_without_stickiness() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start(Persistence::None);
    let nodes = start_nodes(&redis, 2);
    let (home, other) = (nodes[0].addr(), nodes[1].addr());
    let (status, _, body) = http(home, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    let client = Polling { addr: other, sid: open["sid"].as_str().unwrap().to_string() };
    // The owner's address reaches the registry with its next heartbeat.
    let connect = format!(r#"40{{"token":"{}"}}"#, token("alice"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = client.post(&[&connect]).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never forwarded: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.post(&[r#"421["subscribe","chat:relay"]"#]).await, (200, "ok".into()));
    let mut packets = Vec::new();
    while packets.len() < 2 {
        packets.extend(client.get().await.into_iter().filter(|p| p != "2"));
    }
    assert!(packets[0].starts_with(r#"40{"sid":""#), "{packets:?}");
    assert!(packets[1].starts_with(r#"431[{"channel":"chat:relay""#), "{packets:?}");
    let mut publisher = connect_url(&nodes[1].ws_url(), "bob", Encoding::Json).await;
    publisher.ok("publish", json!({"channel": "chat:relay", "event": "said", "data": 1})).await;
    let mut got = Vec::new();
    while got.is_empty() {
        got.extend(client.get().await.into_iter().filter(|p| p != "2" && !p.contains("sb:join")));
    }
    assert_eq!(got, vec![r#"42["said",1]"#.to_string()]);
    // The upgrade through the other node is relayed to the owner.
    let url = format!("ws://{other}/socket.io/?EIO=4&transport=websocket&sid={}", client.sid);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut upgraded = RawSio { ws };
    upgraded.send("2probe").await;
    assert_eq!(upgraded.text().await, "3probe");
    upgraded.send("5").await;
    publisher.ok("publish", json!({"channel": "chat:relay", "event": "said", "data": 2})).await;
    assert_eq!(upgraded.event().await, ("said".to_string(), vec![json!(2)]));
    let ack = upgraded.call(3, "publish", json!({"channel": "chat:relay", "data": 3})).await;
    assert!(ack["offset"].as_u64().is_some(), "{ack}");
    // A session id of a live node that does not hold it: unknown, not forwarded again.
    let ghost = format!("{}-999999", open["sid"].as_str().unwrap().rsplit_once('-').unwrap().0);
    let (status, _, body) =
        http(other, "GET", &format!("/socket.io/?EIO=4&transport=polling&sid={ghost}"), &[], "").await;
    assert_eq!((status, body.as_str()), (400, r#"{"code":1,"message":"Session ID unknown"}"#));
}

/// A namespace with connection state recovery: events carry the client's position in
/// every room; a client that comes back with its `pid` and last `offset` gets every
/// missed event, once, in order, before the CONNECT reply naming the same `pid`, and its
/// rooms back. A `pid` of nobody, or an offset of another session, starts afresh.
#[tokio::test]
async fn connection_state_recovery_resumes_every_room() {
    let mut config = socketio_config();
    config.socketio.namespaces[0].recovery = true;
    let server = TestServer::start(config).await;
    let (mut client, _) = RawSio::open(&server, "").await;
    client.send(&format!(r#"40{{"token":"{}"}}"#, token("alice"))).await;
    let reply: Value = serde_json::from_str(client.text().await.strip_prefix("40").unwrap()).unwrap();
    let pid = reply["pid"].as_str().expect("a pid").to_string();
    client.call(0, "subscribe", json!("nohist:none")).await;
    client.call(1, "subscribe", json!("chat:a")).await;
    client.call(2, "subscribe", json!("chat:b")).await;
    server.backend_publish("chat:a", "said", json!("a1")).await;
    server.backend_publish("chat:b", "said", json!("b1")).await;
    let mut last_offset = String::new();
    for expected in ["a1", "b1"] {
        let (name, args) = client.event().await;
        assert_eq!((name.as_str(), &args[0]), ("said", &json!(expected)));
        last_offset = args[1].as_str().expect("the position vector as last argument").to_string();
    }
    // The transport dies; the rooms go on.
    drop(client);
    for n in 2..5 {
        server.backend_publish("chat:a", "said", json!(format!("a{n}"))).await;
        server.backend_publish("chat:b", "said", json!(format!("b{n}"))).await;
    }
    let (mut back, _) = RawSio::open(&server, "").await;
    back.send(&format!(r#"40{{"token":"{}","pid":"{pid}","offset":"{last_offset}"}}"#, token("alice"))).await;
    let mut missed = Vec::new();
    let connect = loop {
        let text = back.text().await;
        if let Some(reply) = text.strip_prefix("40") {
            break serde_json::from_str::<Value>(reply).unwrap();
        }
        let items: Vec<Value> = serde_json::from_str(text.strip_prefix("42").unwrap()).unwrap();
        if items[0] != "sb:join" {
            missed.push(items[1].as_str().unwrap().to_string());
        }
    };
    assert_eq!(connect["pid"], json!(pid), "recovered: the same pid");
    let mut a: Vec<&str> = missed.iter().filter(|m| m.starts_with('a')).map(String::as_str).collect();
    let mut b: Vec<&str> = missed.iter().filter(|m| m.starts_with('b')).map(String::as_str).collect();
    assert_eq!((a.clone(), b.clone()), (vec!["a2", "a3", "a4"], vec!["b2", "b3", "b4"]), "{missed:?}");
    // Live again in every room, without subscribing.
    server.backend_publish("chat:b", "said", json!("b5")).await;
    assert_eq!(back.event().await.1[0], json!("b5"));
    a.clear();
    b.clear();
    // Unknown pid: a new session, nothing resumed.
    let (mut stranger, _) = RawSio::open(&server, "").await;
    stranger.send(&format!(r#"40{{"token":"{}","pid":"nope","offset":"0:1"}}"#, token("alice"))).await;
    let reply: Value = serde_json::from_str(stranger.text().await.strip_prefix("40").unwrap()).unwrap();
    assert_ne!(reply["pid"], json!(pid));
    // Another user cannot take the session over.
    let (mut thief, _) = RawSio::open(&server, "").await;
    thief
        .send(&format!(r#"40{{"token":"{}","pid":"{pid}","offset":"{last_offset}"}}"#, token("mallory")))
        .await;
    let reply: Value = serde_json::from_str(thief.text().await.strip_prefix("40").unwrap()).unwrap();
    assert_ne!(reply["pid"], json!(pid));
    server.shutdown().await;
}

/// A server-side close tells a Socket.IO client whether to come back: an operator's
/// disconnect (3504) ends with a DISCONNECT packet (`41`, "io server disconnect": the
/// client does not reconnect), a drain only closes the transport (the client reconnects
/// elsewhere). Both say why first, in an `sb:disconnect` event.
#[tokio::test]
async fn server_closes_say_whether_to_reconnect() {
    let mut server = TestServer::start(socketio_config()).await;
    let mut kicked = RawSio::connected(&server, "kicked").await;
    let control = switchboard_gateway::broker::Control::Disconnect { reason: "banned".into() };
    assert!(server.node.broker.control("kicked", control).await.unwrap());
    let (texts, code) = kicked.closed().await;
    assert_eq!(code, Some(Code::ForceDisconnect.as_u16()));
    assert!(
        texts.iter().any(|t| t.starts_with(r#"42["sb:disconnect",{"code":3504"#) && t.contains("banned")),
        "{texts:?}"
    );
    assert_eq!(texts.last().map(String::as_str), Some("41"), "{texts:?}");

    let mut drained = RawSio::connected(&server, "drained").await;
    server.begin_shutdown();
    let (texts, code) = drained.closed().await;
    assert_eq!(code, Some(Code::Shutdown.as_u16()));
    assert!(texts.iter().any(|t| t.contains(r#""reconnect":true"#)), "{texts:?}");
    assert!(!texts.iter().any(|t| t.starts_with("41")), "a drained client must reconnect: {texts:?}");
    server.stopped().await;
}

/// A polling session that closes while its client is upgrading (it stopped polling after
/// the probe) sends its closing packets on the new WebSocket: a refused CONNECT still
/// reaches the client as CONNECT_ERROR.
#[tokio::test]
async fn a_session_closing_during_the_upgrade_answers_on_the_websocket() {
    let server = TestServer::start(socketio_config()).await;
    let (client, _) = Polling::open(&server).await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket&sid={}", server.addr, client.sid);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut upgraded = RawSio { ws };
    upgraded.send("2probe").await;
    assert_eq!(upgraded.text().await, "3probe");
    assert_eq!(client.post(&[r#"40{"token":"not-a-jwt"}"#]).await, (200, "ok".into()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    upgraded.send("5").await;
    let (texts, code) = upgraded.closed().await;
    assert!(texts.first().is_some_and(|t| t.starts_with(r#"44{"data":{"code":113}"#)), "{texts:?}");
    assert_eq!(code, Some(Code::Unauthorized.as_u16()), "{texts:?}");
    server.shutdown().await;
}
