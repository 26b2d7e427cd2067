//! Solved policy tables, kept in memory and (for the allocator) in the state directory, keyed
//! by GPU model fingerprint and demand. Loading never solves, so the warm path may load; only
//! [`TableCache::get`] solves, and only the cold path calls it.

use super::mdp::{Demand, Table, TABLE_VERSION};
use super::model::fingerprint;
use super::PolicyError;
use crate::placement::Profile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TableCache {
    dir: Option<PathBuf>,
    memory: HashMap<(String, String), Arc<Table>>,
    /// How many tables this cache solved (rather than found).
    pub solves: usize,
}

impl TableCache {
    pub fn in_memory() -> TableCache {
        TableCache {
            dir: None,
            memory: HashMap::new(),
            solves: 0,
        }
    }

    pub fn in_dir(dir: &Path) -> TableCache {
        TableCache {
            dir: Some(dir.to_path_buf()),
            memory: HashMap::new(),
            solves: 0,
        }
    }

    /// The file a table lives in: names stay short and safe whatever the profile names are.
    pub fn path(dir: &Path, model: &str, key: &str) -> PathBuf {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        use gpushare_state::{PLACEMENT_PREFIX, PLACEMENT_SUFFIX};
        dir.join(format!(
            "{PLACEMENT_PREFIX}{model}-{h:016x}{PLACEMENT_SUFFIX}"
        ))
    }

    /// A cached table for this GPU and demand key ([`Demand::key`]), if one is present and
    /// current.
    pub fn load(&mut self, profiles: &[Profile], key: &str) -> Option<Arc<Table>> {
        let model = fingerprint(profiles);
        let key = (model.clone(), key.to_string());
        if let Some(t) = self.memory.get(&key) {
            return Some(t.clone());
        }
        let dir = self.dir.as_ref()?;
        let raw = std::fs::read(Self::path(dir, &model, &key.1)).ok()?;
        let mut t: Table = serde_json::from_slice(&raw).ok()?;
        // Stale: another format, another GPU table, another demand (a hash collision), or a
        // solve that did not finish.
        if t.version != TABLE_VERSION
            || t.model != model
            || t.demand.key() != key.1
            || !t.converged
            || t.values.is_empty()
        {
            return None;
        }
        t.reindex();
        let t = Arc::new(t);
        self.memory.insert(key, t.clone());
        Some(t)
    }

    /// The table for this GPU and demand: cached, or solved now and cached.
    pub fn get(
        &mut self,
        profiles: &[Profile],
        demand: &Demand,
    ) -> Result<Arc<Table>, PolicyError> {
        if let Some(t) = self.load(profiles, &demand.key()) {
            return Ok(t);
        }
        let t = Table::solve(profiles, demand)?;
        self.solves += 1;
        if let Some(dir) = &self.dir {
            let path = Self::path(dir, &t.model, &demand.key());
            let data = serde_json::to_vec(&t).expect("tables serialize");
            crate::fsutil::write_atomic(&path, &data, Some(0o600))
                .map_err(|source| PolicyError::Io { path, source })?;
        }
        let t = Arc::new(t);
        self.memory
            .insert((t.model.clone(), demand.key()), t.clone());
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::h100;

    #[test]
    fn cached_table_is_used_when_present_and_rebuilt_when_stale() {
        let dir =
            std::env::temp_dir().join(format!("gpushare-policy-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ps = h100();
        let d = Demand {
            shares: [("1g.10gb".to_string(), 0.5), ("2g.20gb".to_string(), 0.5)].into(),
            load: 3.0,
        }
        .quantized();

        let mut first = TableCache::in_dir(&dir);
        let t = first.get(&ps, &d).unwrap();
        assert_eq!(first.solves, 1);
        let path = TableCache::path(&dir, &t.model, &d.key());
        assert!(path.exists());

        // A new process finds it on disk and does not solve; loading alone never solves.
        let mut second = TableCache::in_dir(&dir);
        assert!(second.load(&ps, &d.key()).is_some());
        second.get(&ps, &d).unwrap();
        assert_eq!(second.solves, 0);

        // Stale (an older format): ignored by load, rebuilt and rewritten by get.
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["version"] = serde_json::json!(TABLE_VERSION + 1);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let mut third = TableCache::in_dir(&dir);
        assert!(third.load(&ps, &d.key()).is_none());
        third.get(&ps, &d).unwrap();
        assert_eq!(third.solves, 1);
        assert!(TableCache::in_dir(&dir).load(&ps, &d.key()).is_some());

        // Corrupt, or for another GPU model: rebuilt too.
        std::fs::write(&path, b"{").unwrap();
        assert!(TableCache::in_dir(&dir).load(&ps, &d.key()).is_none());
        let mut other = ps.clone();
        other[0].instance_count = 6;
        let mut fourth = TableCache::in_dir(&dir);
        fourth.get(&other, &d).unwrap();
        assert_eq!(fourth.solves, 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
