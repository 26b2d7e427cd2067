//! Reading the offers file the full program writes (`gpushare_core::offers`): line-based, one
//! record per line, words separated by single spaces, JSON only as the last words of a line.
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
//! `device` and `env` lines belong to the `offer` above them.

use crate::decimal;

/// The offers file's name inside the state directory.
pub const FILE: &[u8] = b"offers";

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
    if it.next()? != b"gpushare-offers 1" {
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
}
