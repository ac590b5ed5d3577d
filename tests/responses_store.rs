//! Stored OpenAI Responses through the gateway: `store`, `previous_response_id` chains on every
//! channel type (stream and not), `GET|DELETE /v1/responses/{id}`, `input_items`, ownership by
//! client key, pruning, and the store on every database backend.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use support::databases::{self, TestDatabase};
use support::gateway::TestGateway;
use support::http_client::{TestResponse, request, sse_events};
use support::lanes::{LANES, Lane};
use support::mock_upstream::{MockUpstream, RecordedRequest, Reply, default_reply};
use support::relay_fixture::{GROUP, RelayFixture};

/// A mock that answers like the default one, but gives every Responses answer its own id (the
/// default mock always says `resp_mock`), as a real Responses upstream does.
fn mock_with_unique_response_ids() -> MockUpstream {
    let counter = Arc::new(AtomicUsize::new(0));
    MockUpstream::start(move |recorded: &RecordedRequest| {
        let unique = format!("resp_upstream{}", counter.fetch_add(1, Ordering::SeqCst));
        match default_reply(recorded) {
            Reply::Json { status, headers, body } => Reply::Json { status, headers, body: body.replace("resp_mock", &unique) },
            Reply::Sse { events, gap, end } => {
                Reply::Sse { events: events.into_iter().map(|event| event.replace("resp_mock", &unique)).collect(), gap, end }
            }
            other => other,
        }
    })
}

fn fixture_on(lane: &Lane, database: TestDatabase) -> (RelayFixture, MockUpstream) {
    let gateway = TestGateway::start_with(database, |_| {});
    let admin_token = gateway.login_token();
    let client_key = gateway.create_client_key(&admin_token, json!({"name": "client"}));
    let fixture = RelayFixture { gateway, admin_token, client_key };
    let mock = mock_with_unique_response_ids();
    fixture.single_channel(lane, &mock, "sk-upstream");
    (fixture, mock)
}

fn post_responses(fixture: &RelayFixture, client_key: &str, body: &Value) -> TestResponse {
    let auth = format!("Bearer {client_key}");
    request(
        fixture.gateway.address,
        "POST",
        "/v1/responses",
        &[("authorization", &auth), ("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn call(fixture: &RelayFixture, client_key: &str, method: &str, path: &str) -> TestResponse {
    let auth = format!("Bearer {client_key}");
    request(fixture.gateway.address, method, path, &[("authorization", &auth)], b"")
}

/// The response object a client got: the body, or the terminal event of a stream.
fn response_object(response: &TestResponse, stream: bool) -> Value {
    assert_eq!(response.status, 200, "{}", response.text());
    if !stream {
        return response.json();
    }
    let events = sse_events(&response.body);
    let (_, data) = events
        .iter()
        .find(|(name, _)| name.as_deref() == Some("response.completed"))
        .unwrap_or_else(|| panic!("no response.completed event in {}", response.text()));
    serde_json::from_str::<Value>(data).unwrap()["response"].clone()
}

/// Three turns chained with `previous_response_id`; returns the three response ids.
fn three_turns(fixture: &RelayFixture, stream: bool) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let turns = [json!("first question"), json!([{"role": "user", "content": "second question"}]), json!("third question")];
    for input in turns {
        let mut body = json!({"model": GROUP, "input": input, "stream": stream, "instructions": "be brief"});
        if let Some(previous) = ids.last() {
            body["previous_response_id"] = json!(previous);
        }
        let response = post_responses(fixture, &fixture.client_key, &body);
        let object = response_object(&response, stream);
        assert_eq!(object["output"][0]["content"][0]["text"], "Hello from the mock", "{object}");
        let id = object["id"].as_str().expect("a response id").to_string();
        assert!(!ids.contains(&id), "every turn has its own id: {ids:?} {id}");
        ids.push(id);
    }
    ids
}

/// The last upstream request carries the whole conversation, in order, and no foreign id.
fn assert_whole_conversation_sent(lane: &Lane, recorded: &RecordedRequest) {
    let text = String::from_utf8_lossy(&recorded.body).into_owned();
    let first = text.find("first question").unwrap_or_else(|| panic!("{}: turn 1 missing in {text}", lane.channel_type));
    let second = text.find("second question").unwrap_or_else(|| panic!("{}: turn 2 missing in {text}", lane.channel_type));
    let third = text.find("third question").unwrap_or_else(|| panic!("{}: turn 3 missing in {text}", lane.channel_type));
    assert!(first < second && second < third, "{}: turns out of order in {text}", lane.channel_type);
    assert_eq!(text.matches("Hello from the mock").count(), 2, "{}: both earlier answers are sent: {text}", lane.channel_type);
    assert!(!text.contains("previous_response_id"), "{}: the upstream never sees our id: {text}", lane.channel_type);
    assert!(!text.contains("resp_upstream"), "{}: no stored id goes upstream: {text}", lane.channel_type);
}

#[test]
fn a_three_turn_chain_works_on_every_channel_type_stream_and_not() {
    for lane in LANES {
        for stream in [false, true] {
            let (fixture, mock) = fixture_on(&lane, databases::sqlite());
            three_turns(&fixture, stream);
            let requests = mock.requests();
            assert_eq!(requests.len(), 3, "{}", lane.channel_type);
            assert!(!String::from_utf8_lossy(&requests[0].body).contains("second question"));
            assert_whole_conversation_sent(&lane, &requests[2]);
        }
    }
}

#[test]
fn stored_responses_can_be_read_listed_and_deleted_only_by_their_key() {
    let lane = LANES[2];
    let (fixture, _mock) = fixture_on(&lane, databases::sqlite());
    let ids = three_turns(&fixture, false);
    let other_key = fixture.client_key_with(json!({"name": "someone else"}));

    let got = call(&fixture, &fixture.client_key, "GET", &format!("/v1/responses/{}", ids[1]));
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["id"], ids[1].as_str());
    assert_eq!(got.json()["object"], "response");
    assert_eq!(got.json()["output"][0]["content"][0]["text"], "Hello from the mock");

    // The third turn's input is the whole conversation before it: newest first by default.
    let listed = call(&fixture, &fixture.client_key, "GET", &format!("/v1/responses/{}/input_items", ids[2]));
    assert_eq!(listed.status, 200, "{}", listed.text());
    let list = listed.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["has_more"], false);
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 5, "{list}");
    assert_eq!(data[0]["content"], "third question");
    assert_eq!(data[4]["content"], "first question");
    assert_eq!(list["first_id"], data[0]["id"]);
    assert_eq!(list["last_id"], data[4]["id"]);
    let ascending = call(&fixture, &fixture.client_key, "GET", &format!("/v1/responses/{}/input_items?order=asc&limit=2", ids[2])).json();
    assert_eq!(ascending["data"][0]["content"], "first question");
    assert_eq!(ascending["data"].as_array().unwrap().len(), 2);
    assert_eq!(ascending["has_more"], true);

    // Another key sees nothing: not the response, not its items, not as a previous response.
    for (method, path) in [("GET", format!("/v1/responses/{}", ids[1])), ("GET", format!("/v1/responses/{}/input_items", ids[1])), ("DELETE", format!("/v1/responses/{}", ids[1]))] {
        let refused = call(&fixture, &other_key, method, &path);
        assert_eq!(refused.status, 404, "{method} {path}: {}", refused.text());
        assert_eq!(refused.json()["error"]["type"], "invalid_request_error");
    }
    let continued = post_responses(&fixture, &other_key, &json!({"model": GROUP, "input": "hi", "previous_response_id": ids[1]}));
    assert_eq!(continued.status, 404, "{}", continued.text());
    assert!(continued.json()["error"]["message"].as_str().unwrap().contains(&format!("Previous response with id '{}' not found", ids[1])));
    let unauthenticated = request(fixture.gateway.address, "GET", &format!("/v1/responses/{}", ids[1]), &[], b"");
    assert_eq!(unauthenticated.status, 401);

    let deleted = call(&fixture, &fixture.client_key, "DELETE", &format!("/v1/responses/{}", ids[1]));
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json(), json!({"id": ids[1], "object": "response", "deleted": true}));
    assert_eq!(call(&fixture, &fixture.client_key, "GET", &format!("/v1/responses/{}", ids[1])).status, 404);
    assert_eq!(call(&fixture, &fixture.client_key, "DELETE", &format!("/v1/responses/{}", ids[1])).status, 404);
    // The other turns are untouched.
    assert_eq!(call(&fixture, &fixture.client_key, "GET", &format!("/v1/responses/{}", ids[2])).status, 200);
}

#[test]
fn store_false_saves_nothing_and_unknown_ids_are_404_in_the_responses_shape() {
    let lane = LANES[0];
    let (fixture, mock) = fixture_on(&lane, databases::sqlite());
    let unstored = post_responses(&fixture, &fixture.client_key, &json!({"model": GROUP, "input": "hi", "store": false}));
    let id = response_object(&unstored, false)["id"].as_str().unwrap().to_string();
    assert_eq!(call(&fixture, &fixture.client_key, "GET", &format!("/v1/responses/{id}")).status, 404);
    let continued = post_responses(&fixture, &fixture.client_key, &json!({"model": GROUP, "input": "hi", "previous_response_id": id}));
    assert_eq!(continued.status, 404, "{}", continued.text());
    assert_eq!(continued.json()["error"]["type"], "invalid_request_error");
    let unknown = post_responses(&fixture, &fixture.client_key, &json!({"model": GROUP, "input": "hi", "previous_response_id": "resp_nope", "stream": true}));
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(mock.requests().len(), 1, "refused continuations never reach the upstream");
    let relay = &fixture.gateway.running().relay;
    let stored = relay.store.call(move |store| store.response_by_id(&id)).unwrap();
    assert_eq!(stored, None);
}

#[test]
fn expired_responses_are_pruned_and_no_longer_served() {
    let lane = LANES[3];
    let (fixture, _mock) = fixture_on(&lane, databases::sqlite());
    let ids = three_turns(&fixture, true);
    let relay = fixture.gateway.running().relay.clone();
    // Let the saver thread write all three rows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let last = ids[2].clone();
        if relay.store.call(move |store| store.response_by_id(&last)).unwrap().is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the responses were never written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stored = {
        let first = ids[0].clone();
        relay.store.call(move |store| store.response_by_id(&first)).unwrap().unwrap()
    };
    // The default `response_store_hours` is 24.
    assert!((stored.expires_at - stored.created_at - 24 * 3_600).abs() < 120, "{stored:?}");
    let now = octopus::util::unix_seconds();
    assert_eq!(octopus::relay::response_store::prune(&relay.store, now).unwrap(), "deleted 0 stored responses");
    let summary = octopus::relay::response_store::prune(&relay.store, now + 25 * 3_600).unwrap();
    assert_eq!(summary, "deleted 3 stored responses");
    for id in &ids {
        assert_eq!(call(&fixture, &fixture.client_key, "GET", &format!("/v1/responses/{id}")).status, 404);
    }
    // The scheduler knows the job.
    let jobs = support::http_client::json_request(fixture.gateway.address, "GET", "/api/v1/jobs", Some(&fixture.admin_token), None);
    assert!(jobs.text().contains("prune_responses"), "{}", jobs.text());
}

#[test]
fn the_chain_works_on_every_database_backend() {
    for database in databases::all() {
        let backend = database.database_type;
        let (fixture, mock) = fixture_on(&LANES[0], database);
        three_turns(&fixture, false);
        assert_whole_conversation_sent(&LANES[0], &mock.requests()[2]);
        let relay = fixture.gateway.running().relay.clone();
        let deleted = octopus::relay::response_store::prune(&relay.store, octopus::util::unix_seconds() + 30 * 86_400);
        assert!(deleted.is_ok_and(|summary| summary.ends_with("stored responses")), "{backend}");
    }
}
