//! Board profiles (`boards/*.toml`, embedded in the binary): the target and CPU a board
//! is cross-built for, its memory and cores, and runtime defaults that `--board NAME`
//! or `[node] board = "NAME"` lay under a configuration. Keys the configuration file
//! sets itself win.

use serde::Deserialize;

const BOARDS: &[(&str, &str)] = &[
    ("rpi-zero2w", include_str!("../../boards/rpi-zero2w.toml")),
    ("rpi3", include_str!("../../boards/rpi3.toml")),
    ("rpi3-32bit", include_str!("../../boards/rpi3-32bit.toml")),
    ("rpi4", include_str!("../../boards/rpi4.toml")),
    ("rpi5", include_str!("../../boards/rpi5.toml")),
    ("armv7", include_str!("../../boards/armv7.toml")),
    ("aarch64", include_str!("../../boards/aarch64.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub target: String,
    pub target_cpu: String,
    pub memory_mb: u64,
    pub cores: u32,
    /// Configuration keys, table by table.
    #[serde(default)]
    pub defaults: toml::Table,
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
    toml::from_str(text).map_err(|e| format!("board profile {name}: {e}"))
}

/// Lays the board's defaults under `config` (a parsed configuration file): every key
/// the file does not set itself. The strict commit interval is not laid under a
/// configuration that chose another durability (its own default fits it better).
pub fn apply(config: &mut toml::Table, name: &str) -> Result<(), String> {
    let profile = profile(name)?;
    let durability = config
        .get("storage")
        .and_then(|s| s.get("durability"))
        .and_then(|d| d.as_str())
        .unwrap_or("strict")
        .to_owned();
    for (section, defaults) in profile.defaults {
        let toml::Value::Table(defaults) = defaults else {
            return Err(format!(
                "board profile {name}: [defaults.{section}] is not a table"
            ));
        };
        let target = config
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(target) = target else {
            return Err(format!("[{section}] is not a table"));
        };
        for (key, value) in defaults {
            if section == "storage" && key == "commit_interval_ms" && durability != "strict" {
                continue;
            }
            target.entry(key).or_insert(value);
        }
    }
    Ok(())
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
