//! Board profiles (`boards/*.toml`, embedded in the binary): the target and CPU a board
//! is cross-built for, its memory and cores, and runtime defaults that `--board NAME`
//! or `[node] board = "NAME"` lay under a configuration. Keys the configuration file
//! sets itself win.

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, Deserializer};

const BOARDS: &[(&str, &str)] = &[
    ("rpi-zero2w", include_str!("../../boards/rpi-zero2w.toml")),
    ("rpi3", include_str!("../../boards/rpi3.toml")),
    ("rpi3-32bit", include_str!("../../boards/rpi3-32bit.toml")),
    ("rpi4", include_str!("../../boards/rpi4.toml")),
    ("rpi5", include_str!("../../boards/rpi5.toml")),
    ("armv7", include_str!("../../boards/armv7.toml")),
    ("aarch64", include_str!("../../boards/aarch64.toml")),
];

#[derive(Debug)]
pub struct Profile {
    pub target: String,
    pub target_cpu: String,
    pub memory_mb: u64,
    pub cores: u32,
    /// Configuration keys, table by table, as parsed (not yet typed).
    pub defaults: DeTable<'static>,
}

/// A profile's own keys (its `[defaults]` are laid under a configuration, untyped).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    target: String,
    target_cpu: String,
    memory_mb: u64,
    cores: u32,
}

pub fn names() -> impl Iterator<Item = &'static str> {
    BOARDS.iter().map(|(name, _)| *name)
}

pub fn profile(name: &str) -> Result<Profile, String> {
    let Some((_, text)) = BOARDS.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = names().collect();
        return Err(format!(
            "unknown board {name:?}; the profiles are {}",
            known.join(", ")
        ));
    };
    let fail = |mut e: toml::de::Error| {
        e.set_input(Some(text));
        format!("board profile {name}: {e}")
    };
    let mut table = DeTable::parse(text).map_err(fail)?;
    let defaults = match table.get_mut().remove("defaults").map(Spanned::into_inner) {
        None => DeTable::new(),
        Some(DeValue::Table(defaults)) => defaults,
        Some(_) => return Err(format!("board profile {name}: defaults is not a table")),
    };
    let header = Header::deserialize(Deserializer::from(table)).map_err(fail)?;
    Ok(Profile {
        target: header.target,
        target_cpu: header.target_cpu,
        memory_mb: header.memory_mb,
        cores: header.cores,
        defaults,
    })
}

/// Lays the board's defaults under `config` (a parsed configuration file): every key
/// the file does not set itself. The strict commit interval is not laid under a
/// configuration that chose another durability (its own default fits it better).
pub fn apply(config: &mut DeTable<'_>, name: &str) -> Result<(), String> {
    let profile = profile(name)?;
    let durability = match table_of(config, "storage").and_then(|s| s.get("durability")) {
        Some(value) => match value.get_ref() {
            DeValue::String(d) => d.to_string(),
            _ => String::new(),
        },
        None => "strict".to_owned(),
    };
    for (section, defaults) in profile.defaults {
        let DeValue::Table(defaults) = defaults.into_inner() else {
            return Err(format!(
                "board profile {name}: [defaults.{section}] is not a table"
            ));
        };
        let target = config
            .entry(section.clone())
            .or_insert_with(|| Spanned::new(0..0, DeValue::Table(DeTable::new())));
        let DeValue::Table(target) = target.get_mut() else {
            return Err(format!("[{section}] is not a table"));
        };
        for (key, value) in defaults {
            if *section.get_ref() == "storage"
                && *key.get_ref() == "commit_interval_ms"
                && durability != "strict"
            {
                continue;
            }
            target.entry(key).or_insert(value);
        }
    }
    Ok(())
}

/// The table `name` of a parsed configuration, when it is one.
pub fn table_of<'t, 'i>(config: &'t DeTable<'i>, name: &str) -> Option<&'t DeTable<'i>> {
    match config.get(name)?.get_ref() {
        DeValue::Table(table) => Some(table),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_profile_loads_and_its_limits_fit_the_board() {
        for name in names() {
            let profile = profile(name).unwrap();
            let config = Config::parse_with_board("", Some(name)).unwrap();
            let l = &config.limits;
            let s = &config.storage;
            // Worst cases held in memory at once: every connection idle over TLS
            // (~16 KB), the retained set, a few sessions with full queues, and the
            // store's two SQLite page caches.
            let needed = l.max_connections as u64 * 16 * 1024
                + s.max_retained_bytes as u64
                + 8 * l.max_queued_bytes as u64
                + 2 * s.cache_kib * 1024;
            let memory = profile.memory_mb * 1024 * 1024;
            assert!(
                needed <= memory / 2,
                "{name}: limits need {} MiB of {} MiB",
                needed >> 20,
                profile.memory_mb
            );
            assert!(config.node.threads as u32 <= profile.cores, "{name}");
            assert!(
                profile.target.ends_with("-linux-gnu") || profile.target.ends_with("gnueabihf")
            );
        }
    }

    #[test]
    fn the_files_own_keys_win_and_batched_keeps_its_interval() {
        let text = "[limits]\nmax_connections = 7\n[storage]\ndurability = \"batched\"\n";
        let c = Config::parse_with_board(text, Some("rpi-zero2w")).unwrap();
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.node.threads, 2, "from the board");
        assert_eq!(
            c.storage.commit_interval_ms, None,
            "batched keeps its 1 s default"
        );
        let c = Config::parse_with_board("[node]\nboard = \"rpi4\"\n", None).unwrap();
        assert_eq!(c.limits.max_connections, 20_000);
        let err = Config::parse_with_board("", Some("toaster")).unwrap_err();
        assert!(
            err.contains("unknown board \"toaster\"") && err.contains("rpi4"),
            "{err}"
        );
    }
}
