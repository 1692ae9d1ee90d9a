//! The store on its own, against the real bucket: listing spans several fetches and
//! reads only the owner's keys; delete markers written by others are skipped.

use testkit::NatsServer;
use todo_api::auth::Owner;
use todo_api::config::DEFAULT_MAX_BYTES;
use todo_api::store::{BUCKET, LIST_BATCH, Store};

#[tokio::test]
async fn listing_spans_several_fetches_and_only_the_owners_keys() {
    let nats = NatsServer::start().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let store = Store::open(&js, DEFAULT_MAX_BYTES, 1000).await.unwrap();
    let (alice, bob) = (Owner::new("https://a", "alice"), Owner::new("https://a", "bob"));
    let count = LIST_BATCH + 10;
    for i in 0..count {
        store.create(&alice, format!("todo {i}")).await.unwrap();
    }
    let bobs = store.create(&bob, "bob's".into()).await.unwrap();
    let listed = store.list(&alice).await.unwrap();
    assert_eq!(listed.len(), count);
    assert!(
        listed.windows(2).all(|w| w[0].created_at <= w[1].created_at),
        "oldest first"
    );
    assert!(listed.iter().all(|t| t.id != bobs.id));

    // A plain KV delete leaves a marker; the listing skips it.
    let kv = js.get_key_value(BUCKET).await.unwrap();
    kv.delete(format!("{}.{}", alice.as_str(), listed[0].id)).await.unwrap();
    assert_eq!(store.list(&alice).await.unwrap().len(), count - 1);
    // Reopening (a restart) keeps the todos.
    let reopened = Store::open(&js, DEFAULT_MAX_BYTES, 1000).await.unwrap();
    assert_eq!(reopened.list(&bob).await.unwrap(), vec![bobs]);
}
