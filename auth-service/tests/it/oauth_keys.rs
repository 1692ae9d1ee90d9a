//! Signing keys shared by replicas through the `auth_keys` bucket (real NATS):
//! rotation happens once however many replicas reload, retired keys leave the JWKS,
//! and the sealed set needs the right vault key.

use std::time::Duration;

use auth_service::crypto::Sealer;
use auth_service::signing::{RETIRE_MARGIN, SigningError, SigningKeys};
use auth_service::store::Stores;

use crate::oauth_kit::bounded;

const ROTATION: Duration = Duration::from_secs(100);
const LEAD: Duration = Duration::from_secs(30);
const ACCESS_TTL: Duration = Duration::from_secs(900);

fn jwks_kids(keys: &SigningKeys) -> Vec<String> {
    keys.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn replicas_rotate_once_and_retire_the_oldest_key() {
    bounded(async {
        let nats = testkit::NatsServer::start().unwrap();
        let nc = async_nats::connect(&nats.url).await.unwrap();
        let stores = Stores::open(&async_nats::jetstream::new(nc)).await.unwrap();
        let sealer = Sealer::from_list(&Sealer::generate_entry("k1")).unwrap();
        let open = || SigningKeys::open(stores.keys.clone(), sealer.clone(), ROTATION, LEAD, ACCESS_TTL, None);

        let a = open().await.unwrap();
        let now = auth_service::unix_now();
        let b = open().await.unwrap();
        let first = a.kids();
        assert_eq!(first.len(), 1, "the first replica creates one key");
        assert_eq!(b.kids(), first, "the second replica loads it");

        // Rotation is due: replica A adds a key; both are published.
        a.reload(now + ROTATION.as_secs()).await.unwrap();
        let rotated = a.kids();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert_eq!(rotated[0], first[0], "oldest first");
        assert_eq!(jwks_kids(&a).len(), 2);
        assert!(jwks_kids(&a).contains(&first[0]), "the previous key stays published");
        assert_eq!(
            a.current().unwrap().kid(),
            first[0],
            "the new key is published before it signs"
        );

        // Replica B reloads at the same moment: it adopts A's rotation, no third key.
        b.reload(now + ROTATION.as_secs()).await.unwrap();
        assert_eq!(b.kids(), rotated);
        assert_eq!(b.current().unwrap().kid(), first[0]);
        assert_eq!(jwks_kids(&b).len(), 2);

        // Published for the lead: new tokens use the new key, on both replicas.
        for r in [&a, &b] {
            r.reload(now + ROTATION.as_secs() + LEAD.as_secs()).await.unwrap();
            assert_eq!(r.current().unwrap().kid(), rotated[1], "new tokens use the new key");
            assert_eq!(r.kids(), rotated, "no third key");
        }

        // Once no unexpired token can carry the oldest key, it is dropped.
        let later = now + ROTATION.as_secs() + LEAD.as_secs() + ACCESS_TTL.as_secs() + RETIRE_MARGIN.as_secs();
        a.reload(later).await.unwrap();
        let after = a.kids();
        assert!(!after.contains(&first[0]), "oldest key retired: {after:?}");
        assert!(after.contains(&rotated[1]), "its successor stays: {after:?}");
        assert!(!jwks_kids(&a).contains(&first[0]));
        assert!(a.by_kid(&first[0]).is_none());
        b.reload(later).await.unwrap();
        assert_eq!(b.kids(), after, "the other replica converges without rotating again");
    })
    .await;
}

#[actix_web::test]
async fn a_wrong_vault_key_cannot_open_the_stored_keys() {
    bounded(async {
        let nats = testkit::NatsServer::start().unwrap();
        let nc = async_nats::connect(&nats.url).await.unwrap();
        let stores = Stores::open(&async_nats::jetstream::new(nc)).await.unwrap();
        let right = Sealer::from_list(&Sealer::generate_entry("k1")).unwrap();
        SigningKeys::open(stores.keys.clone(), right.clone(), ROTATION, LEAD, ACCESS_TTL, None)
            .await
            .unwrap();

        // Same key id, other bytes; and another key id altogether.
        for wrong in [Sealer::generate_entry("k1"), Sealer::generate_entry("k2")] {
            let wrong = Sealer::from_list(&wrong).unwrap();
            match SigningKeys::open(stores.keys.clone(), wrong, ROTATION, LEAD, ACCESS_TTL, None).await {
                Err(SigningError::Key { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
                Ok(k) => panic!("opened with a wrong vault key: {:?}", k.kids()),
            }
        }
        // The right key still works (nothing was overwritten).
        let again = SigningKeys::open(stores.keys.clone(), right, ROTATION, LEAD, ACCESS_TTL, None)
            .await
            .unwrap();
        assert_eq!(again.kids().len(), 1);
    })
    .await;
}
