//! The relay's immutable view of the configuration: groups, channels and client keys, rebuilt
//! from the store after every admin write (and periodically, for several nodes on one database)
//! and swapped in whole. The hot path reads it and never queries SQL.

use std::sync::Arc;

use foldhash::HashMap;

use crate::store::entities::{ApiKey, Channel, Group};
use crate::store::{Store, StoreResult};

/// Everything the relay routes on, indexed for lookups.
#[derive(Default, Debug)]
pub struct Snapshot {
    pub groups_by_name: HashMap<String, Arc<Group>>,
    pub channels_by_id: HashMap<i64, Arc<Channel>>,
    pub api_keys_by_hash: HashMap<String, Arc<ApiKey>>,
}

impl Snapshot {
    /// Reads the whole configuration from the store (runs on a store thread).
    pub fn load(store: &mut dyn Store) -> StoreResult<Snapshot> {
        let channels = store.list_channels()?;
        let groups = store.list_groups()?;
        let api_keys = store.list_api_keys()?;
        Ok(Snapshot {
            groups_by_name: groups.into_iter().map(|group| (group.name.clone(), Arc::new(group))).collect(),
            channels_by_id: channels.into_iter().map(|channel| (channel.id, Arc::new(channel))).collect(),
            api_keys_by_hash: api_keys.into_iter().map(|key| (key.key_hash.clone(), Arc::new(key))).collect(),
        })
    }

    /// Group names sorted, for the models list.
    pub fn group_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.groups_by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}
