//! The offers file: the warm grants the entry binary may make by itself, written by the full
//! program (core's `offers` decides what to offer) after each change of the ledger, read by the
//! entry binary with no parser. Line-based, one record per line, words separated by single
//! spaces, JSON (compact, so with no newline) only as the last words of a line.
//!
//! ```text
//! gpushare-offers 1
//! generation <ledger generation>
//! config <dev> <ino> <size> <mtime s> <mtime ns>   (or `config -`: no config file)
//! path-env <NAME> <1: prepend | 0: append> <dir> =<default>
//! mount <destination> <mount JSON>
//! hook <path> <hook JSON>
//! offer <released container id or -> <profile> <MIG UUID> <capability access file>
//! device <path> <major> <minor> <linux.devices JSON> <allow rule JSON>
//! env <NAME> <value>
//! end
//! ```
//!
//! `device` and `env` lines belong to the `offer` above them. The file is written whole (a temp
//! file renamed over it, no fsync: offers of an older generation than the ledger's are never
//! used, so losing them costs one slower grant). A file of another first line, or without its
//! `end`, is not read: the full wrapper grants, and writes the offers again.

use crate::decimal;
use crate::journal::{is_plain_id, is_plain_root};
use core::fmt::Write;

/// The offers file's name inside the state directory.
pub const NAME: &str = "offers";
/// The file's first line.
const VERSION_LINE: &str = "gpushare-offers 1";

#[derive(Debug, Clone, Copy)]
pub struct Offers<'a> {
    text: &'a [u8],
    pub generation: u64,
    /// The config file's identity words, or `-`.
    pub config: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathEnv<'a> {
    pub name: &'a [u8],
    pub prepend: bool,
    pub dir: &'a [u8],
    pub default: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device<'a> {
    pub path: &'a [u8],
    pub major: &'a [u8],
    pub minor: &'a [u8],
    pub json: &'a [u8],
    pub rule: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    pub instance: &'a [u8],
    pub cap_file: &'a [u8],
    /// The offer's own `device` and `env` lines.
    body: &'a [u8],
}

fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n')
}

/// `line` without its first word `tag` and the space after it.
fn tagged<'a>(line: &'a [u8], tag: &[u8]) -> Option<&'a [u8]> {
    line.strip_prefix(tag)?.strip_prefix(b" ")
}

/// The first `N` words of `rest`, and what follows them (the last part may hold spaces).
fn words<const N: usize>(rest: &[u8]) -> Option<([&[u8]; N], &[u8])> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut rest = rest;
    for slot in &mut out {
        let end = rest.iter().position(|&b| b == b' ')?;
        *slot = &rest[..end];
        if slot.is_empty() {
            return None;
        }
        rest = &rest[end + 1..];
    }
    Some((out, rest))
}

/// The offers, if `text` is a whole offers file (it ends with `end`).
pub fn parse(text: &[u8]) -> Option<Offers<'_>> {
    let body = text.strip_suffix(b"end\n")?;
    let mut it = lines(body);
    if it.next()? != VERSION_LINE.as_bytes() {
        return None;
    }
    let generation = decimal::parse(tagged(it.next()?, b"generation")?)?;
    let config = tagged(it.next()?, b"config")?;
    Some(Offers {
        text: body,
        generation,
        config,
    })
}

impl<'a> Offers<'a> {
    /// Whether the offers were made under the config file of this identity (device, inode,
    /// size, mtime seconds and nanoseconds; None: no config file).
    pub fn made_under(&self, config: Option<[u64; 5]>) -> bool {
        let Some(id) = config else {
            return self.config == b"-";
        };
        let mut words = self.config.split(|&b| b == b' ');
        id.iter()
            .all(|&v| words.next().is_some_and(|w| decimal::parse(w) == Some(v)))
            && words.next().is_none()
    }

    pub fn path_envs(&self) -> impl Iterator<Item = Option<PathEnv<'a>>> + 'a {
        lines(self.text)
            .filter_map(|l| tagged(l, b"path-env"))
            .map(|rest| {
                let ([name, prepend, dir], default) = words::<3>(rest)?;
                Some(PathEnv {
                    name,
                    prepend: match prepend {
                        b"1" => true,
                        b"0" => false,
                        _ => return None,
                    },
                    dir,
                    default: default.strip_prefix(b"=")?,
                })
            })
    }

    /// (destination, JSON) of each mount.
    pub fn mounts(&self) -> impl Iterator<Item = Option<(&'a [u8], &'a [u8])>> + 'a {
        lines(self.text)
            .filter_map(|l| tagged(l, b"mount"))
            .map(|rest| {
                let ([dest], json) = words::<1>(rest)?;
                Some((dest, json))
            })
    }

    /// (path, JSON) of the poststop hook.
    pub fn hook(&self) -> Option<(&'a [u8], &'a [u8])> {
        let rest = lines(self.text).find_map(|l| tagged(l, b"hook"))?;
        let ([path], json) = words::<1>(rest)?;
        Some((path, json))
    }

    /// The offer for `profile` in the state where `released` (a lease of the ledger) is
    /// released again, or as written (`None`).
    pub fn offer(&self, released: Option<&[u8]>, profile: &[u8]) -> Option<Offer<'a>> {
        let text = self.text;
        let mut at = 0;
        for line in lines(text) {
            let next = at + line.len() + 1;
            if let Some(rest) = tagged(line, b"offer") {
                let ([rel, prof, instance], cap_file) = words::<3>(rest)?;
                let rel = (rel != b"-").then_some(rel);
                if rel == released && prof == profile {
                    let start = next.min(text.len());
                    let len = lines(&text[start..])
                        .take_while(|l| l.starts_with(b"device ") || l.starts_with(b"env "))
                        .map(|l| l.len() + 1)
                        .sum::<usize>();
                    return Some(Offer {
                        instance,
                        cap_file,
                        body: &text[start..(start + len).min(text.len())],
                    });
                }
            }
            at = next;
        }
        None
    }
}

impl<'a> Offer<'a> {
    pub fn devices(&self) -> impl Iterator<Item = Option<Device<'a>>> + 'a {
        lines(self.body)
            .filter_map(|l| tagged(l, b"device"))
            .map(|rest| {
                let ([path, major, minor, json], rule) = words::<4>(rest)?;
                decimal::parse(major)?;
                decimal::parse(minor)?;
                Some(Device {
                    path,
                    major,
                    minor,
                    json,
                    rule,
                })
            })
    }

    /// (name, value) of each variable.
    pub fn env(&self) -> impl Iterator<Item = Option<(&'a [u8], &'a [u8])>> + 'a {
        lines(self.body)
            .filter_map(|l| tagged(l, b"env"))
            .map(|rest| {
                let ([name], value) = words::<1>(rest)?;
                Some((name, value))
            })
    }
}

/// Whether `s` can stand in the file as one word: not empty, no space, control character,
/// `"` or `\`.
pub fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b > b' ' && b != 0x7f && b != b'\\' && b != b'"')
}

/// Whether `json` can end a line: compact, with no newline.
fn is_tail(json: &str) -> bool {
    !json.contains('\n')
}

/// The file's first lines: its version, the ledger `generation` the offers are for, and the
/// identity of the config file they were made under (see [`Offers::made_under`]).
pub fn write_head(out: &mut impl Write, generation: u64, config: Option<[u64; 5]>) -> Option<()> {
    writeln!(out, "{VERSION_LINE}\ngeneration {generation}").ok()?;
    match config {
        None => writeln!(out, "config -"),
        Some([dev, ino, size, s, ns]) => writeln!(out, "config {dev} {ino} {size} {s} {ns}"),
    }
    .ok()
}

/// A `path-env` line; None, with nothing written, when a part is not a word.
pub fn write_path_env(
    out: &mut impl Write,
    name: &str,
    prepend: bool,
    dir: &str,
    default: &str,
) -> Option<()> {
    if !is_word(name) || !is_word(dir) || !(default.is_empty() || is_word(default)) {
        return None;
    }
    writeln!(
        out,
        "path-env {name} {} {dir} ={default}",
        u8::from(prepend)
    )
    .ok()
}

/// A `mount` line, as [`write_path_env`].
pub fn write_mount(out: &mut impl Write, destination: &str, json: &str) -> Option<()> {
    if !is_word(destination) || !is_tail(json) {
        return None;
    }
    writeln!(out, "mount {destination} {json}").ok()
}

/// The `hook` line, as [`write_path_env`].
pub fn write_hook(out: &mut impl Write, path: &str, json: &str) -> Option<()> {
    if !is_word(path) || !is_tail(json) {
        return None;
    }
    writeln!(out, "hook {path} {json}").ok()
}

/// A device node an offer adds: its `device` line's parts.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLine<'a> {
    pub path: &'a str,
    pub major: u32,
    pub minor: u32,
    /// The spec's `linux.devices` entry.
    pub json: &'a str,
    /// The spec's `linux.resources.devices` rule.
    pub rule: &'a str,
}

/// One offer: `instance` (a MIG UUID, whose capability file is `cap_file`) for a request of
/// `profile`, in the state where `released` is released again (None: as written), with its
/// own device nodes and variables. None, with nothing written, when a part cannot be written.
pub fn write_offer<'a>(
    out: &mut impl Write,
    released: Option<&str>,
    profile: &str,
    instance: &str,
    cap_file: &str,
    devices: impl Iterator<Item = DeviceLine<'a>> + Clone,
    env: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) -> Option<()> {
    if !released.is_none_or(|r| is_plain_id(r.as_bytes()))
        || !is_word(profile)
        || !is_plain_id(instance.as_bytes())
        || !is_plain_root(cap_file.as_bytes())
        || devices.clone().any(|d| {
            !is_word(d.path) || !is_tail(d.json) || !is_tail(d.rule) || d.json.contains(' ')
        })
        || env.clone().any(|(k, v)| !is_word(k) || !is_word(v))
    {
        return None;
    }
    let released = released.unwrap_or("-");
    writeln!(out, "offer {released} {profile} {instance} {cap_file}").ok()?;
    for d in devices {
        let DeviceLine {
            path,
            major,
            minor,
            json,
            rule,
        } = d;
        writeln!(out, "device {path} {major} {minor} {json} {rule}").ok()?;
    }
    for (k, v) in env {
        writeln!(out, "env {k} {v}").ok()?;
    }
    Some(())
}

/// The file's last line: a file without it (a write cut short) is not read.
pub fn write_end(out: &mut impl Write) -> Option<()> {
    writeln!(out, "end").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = b"gpushare-offers 1
generation 12
config 2049 77 145 1795580000 5
path-env LD_LIBRARY_PATH 1 /usr/local/gpushare/lib =
path-env PATH 0 /usr/local/gpushare/bin =/usr/bin:/bin
mount /usr/local/gpushare {\"destination\":\"/usr/local/gpushare\",\"options\":[\"a b\"]}
hook /usr/bin/gpushare {\"path\":\"/usr/bin/gpushare\"}
offer - 1g.10gb MIG-aaa /x/gi13/ci0/access
device /dev/nvidiactl 195 255 {\"path\":\"/dev/nvidiactl\"} {\"allow\":true}
env CUDA_VISIBLE_DEVICES MIG-aaa
offer c1 2g.20gb MIG-bbb /x/gi5/ci0/access
device /dev/nvidia0 195 0 {} {}
env CUDA_VISIBLE_DEVICES MIG-bbb
env NVIDIA_VISIBLE_DEVICES MIG-bbb
end
";

    #[test]
    fn reads_what_the_full_program_writes() {
        let o = parse(TEXT).unwrap();
        assert_eq!(o.generation, 12);
        assert_eq!(o.config, b"2049 77 145 1795580000 5");
        let pe: std::vec::Vec<_> = o.path_envs().map(Option::unwrap).collect();
        assert_eq!(pe[0].default, b"");
        assert!(pe[0].prepend);
        assert_eq!(pe[1].default, b"/usr/bin:/bin");
        let m: std::vec::Vec<_> = o.mounts().map(Option::unwrap).collect();
        assert_eq!(
            m[0].1,
            &b"{\"destination\":\"/usr/local/gpushare\",\"options\":[\"a b\"]}"[..]
        );
        assert_eq!(o.hook().unwrap().0, b"/usr/bin/gpushare");

        let a = o.offer(None, b"1g.10gb").unwrap();
        assert_eq!(a.instance, b"MIG-aaa");
        assert_eq!(a.devices().count(), 1);
        assert_eq!(
            a.env().map(Option::unwrap).collect::<std::vec::Vec<_>>(),
            [(&b"CUDA_VISIBLE_DEVICES"[..], &b"MIG-aaa"[..])]
        );
        assert!(o.offer(Some(b"c1"), b"1g.10gb").is_none());
        assert!(o.offer(None, b"2g.20gb").is_none());
        let b = o.offer(Some(b"c1"), b"2g.20gb").unwrap();
        assert_eq!(b.cap_file, b"/x/gi5/ci0/access");
        assert_eq!(b.devices().map(Option::unwrap).next().unwrap().minor, b"0");
        assert_eq!(b.env().count(), 2);
    }

    #[test]
    fn a_file_cut_short_or_of_another_format_is_not_read() {
        assert!(parse(&TEXT[..TEXT.len() - 1]).is_none());
        assert!(parse(&TEXT[..TEXT.len() - 5]).is_none());
        assert!(parse(b"gpushare-offers 2\ngeneration 1\nconfig -\nend\n").is_none());
        assert!(parse(b"gpushare-offers 1\ngeneration x\nconfig -\nend\n").is_none());
        assert!(parse(b"gpushare-offers 1\ngeneration 1\nconfig -\nend\n").is_some());
    }

    /// [`TEXT`], written by the writer.
    fn written() -> std::string::String {
        let mut o = std::string::String::new();
        write_head(&mut o, 12, Some([2049, 77, 145, 1795580000, 5])).unwrap();
        write_path_env(
            &mut o,
            "LD_LIBRARY_PATH",
            true,
            "/usr/local/gpushare/lib",
            "",
        )
        .unwrap();
        write_path_env(
            &mut o,
            "PATH",
            false,
            "/usr/local/gpushare/bin",
            "/usr/bin:/bin",
        )
        .unwrap();
        write_mount(
            &mut o,
            "/usr/local/gpushare",
            "{\"destination\":\"/usr/local/gpushare\",\"options\":[\"a b\"]}",
        )
        .unwrap();
        write_hook(
            &mut o,
            "/usr/bin/gpushare",
            "{\"path\":\"/usr/bin/gpushare\"}",
        )
        .unwrap();
        let ctl = DeviceLine {
            path: "/dev/nvidiactl",
            major: 195,
            minor: 255,
            json: "{\"path\":\"/dev/nvidiactl\"}",
            rule: "{\"allow\":true}",
        };
        let env_a = [("CUDA_VISIBLE_DEVICES", "MIG-aaa")];
        write_offer(
            &mut o,
            None,
            "1g.10gb",
            "MIG-aaa",
            "/x/gi13/ci0/access",
            [ctl].into_iter(),
            env_a.into_iter(),
        )
        .unwrap();
        let gpu = DeviceLine {
            path: "/dev/nvidia0",
            major: 195,
            minor: 0,
            json: "{}",
            rule: "{}",
        };
        let env_b = [
            ("CUDA_VISIBLE_DEVICES", "MIG-bbb"),
            ("NVIDIA_VISIBLE_DEVICES", "MIG-bbb"),
        ];
        write_offer(
            &mut o,
            Some("c1"),
            "2g.20gb",
            "MIG-bbb",
            "/x/gi5/ci0/access",
            [gpu].into_iter(),
            env_b.into_iter(),
        )
        .unwrap();
        write_end(&mut o).unwrap();
        o
    }

    #[test]
    fn the_writer_writes_what_the_reader_reads() {
        assert_eq!(written().as_bytes(), TEXT);
        let o = parse(TEXT).unwrap();
        assert!(o.made_under(Some([2049, 77, 145, 1795580000, 5])));
        assert!(!o.made_under(Some([2049, 77, 145, 1795580000, 6])));
        assert!(!o.made_under(None));
        let mut none = std::string::String::new();
        write_head(&mut none, 1, None).unwrap();
        write_end(&mut none).unwrap();
        let n = parse(none.as_bytes()).unwrap();
        assert!(n.made_under(None) && !n.made_under(Some([0; 5])));
    }

    #[test]
    fn a_part_that_is_not_a_word_writes_nothing() {
        let mut o = std::string::String::new();
        assert!(write_path_env(&mut o, "A B", true, "/d", "").is_none());
        assert!(write_path_env(&mut o, "A", true, "/d", "x\"y").is_none());
        assert!(write_mount(&mut o, "/a b", "{}").is_none());
        assert!(write_mount(&mut o, "/a", "{\n}").is_none());
        assert!(write_hook(&mut o, "", "{}").is_none());
        let d = |path, json| DeviceLine {
            path,
            major: 1,
            minor: 2,
            json,
            rule: "{}",
        };
        let no_env = core::iter::empty::<(&str, &str)>();
        for (released, profile, instance, cap, dev) in [
            (Some("a b"), "p", "MIG-1", "/c", d("/dev/x", "{}")),
            (None, "p q", "MIG-1", "/c", d("/dev/x", "{}")),
            (None, "p", "MIG 1", "/c", d("/dev/x", "{}")),
            (None, "p", "MIG-1", "c", d("/dev/x", "{}")),
            (None, "p", "MIG-1", "/c", d("/dev/x y", "{}")),
            (None, "p", "MIG-1", "/c", d("/dev/x", "{\"a\": 1}")),
        ] {
            assert!(write_offer(
                &mut o,
                released,
                profile,
                instance,
                cap,
                [dev].into_iter(),
                no_env.clone()
            )
            .is_none());
        }
        let bad_env = [("A", "b c")];
        assert!(write_offer(
            &mut o,
            None,
            "p",
            "MIG-1",
            "/c",
            core::iter::empty(),
            bad_env.into_iter()
        )
        .is_none());
        assert_eq!(o, "");
    }
}
