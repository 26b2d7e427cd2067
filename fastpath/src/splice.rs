//! The spec edit of an offered grant, made on the spec's own bytes with no allocator: the same
//! device nodes, allow rules, env, driver mounts and poststop hook that the full wrapper's
//! `spec::apply` writes (rendered by it into the offers), added to a spec where none of them is
//! there yet. Only that plain case is edited; whatever `spec::apply` would have to replace or
//! remove, or a spec whose shape it would refuse, is left to the full wrapper ([`Refused`]).
//! The engine's own bytes are kept as they are (formatting, key order, numbers): the result is
//! the same JSON as the full wrapper's, not the same text.

use crate::json::{Json, Kind, Node, R};
use gpushare_state::offers::{Offer, Offers, PathEnv};

/// The spec is not the plain case; the full wrapper decides.
pub use crate::json::Refused;

const MAX_OPS: usize = 24;
const MAX_PATH_ENVS: usize = 8;

#[derive(Debug, Clone, Copy)]
enum What {
    DeviceElems,
    RuleElems,
    DevicesMember,
    RulesMember,
    ResourcesMember,
    LinuxMember,
    /// The offer's variables, then the path variables the spec lacks (bit i: path-env i).
    EnvElems(u8),
    EnvMember(u8),
    ProcessMember(u8),
    /// Path-env `i`'s new value, computed from the spec's current one at `value` (its bytes).
    EnvReplace(usize, usize, usize),
    MountElems,
    MountsMember,
    HookElem,
    PoststopMember,
    HooksMember,
}

#[derive(Debug, Clone, Copy)]
struct Op {
    at: usize,
    end: usize,
    what: What,
    /// A `,` before the edit (an element or member added after others) or after it (one added
    /// before others).
    comma: bool,
    comma_after: bool,
}

/// The edits to make, in the order of the spec's bytes.
pub struct Plan {
    ops: [Option<Op>; MAX_OPS],
    n: usize,
}

impl Plan {
    fn push(&mut self, op: Op) -> R<()> {
        if self.n == MAX_OPS {
            return Err(Refused);
        }
        // Stable insertion by offset: edits at one place keep the order they were planned in.
        let mut i = self.n;
        while i > 0 && self.ops[i - 1].is_some_and(|o| o.at > op.at) {
            self.ops[i] = self.ops[i - 1];
            i -= 1;
        }
        self.ops[i] = Some(op);
        self.n += 1;
        Ok(())
    }

    /// Add to the end of a container (before its closing bracket).
    fn append(&mut self, json: &Json, container: Node, what: What) -> R<()> {
        let at = container.end - 1;
        let earlier = self.ops[..self.n].iter().flatten().any(|o| o.at == at);
        self.push(Op {
            at,
            end: at,
            what,
            comma: earlier || !json.is_empty(container),
            comma_after: false,
        })
    }

    /// Add at the start of an array (after its opening bracket), the only edit there.
    fn prepend(&mut self, json: &Json, container: Node, what: What) -> R<()> {
        let at = container.start + 1;
        self.push(Op {
            at,
            end: at,
            what,
            comma: false,
            comma_after: !json.is_empty(container),
        })
    }
}

/// The request of a plain spec: `annotations` holds `gpu.profile` as a string, and no other
/// `gpu.*` key. None when the spec asks for anything else or the full wrapper must look.
pub fn plain_profile(spec: &[u8]) -> Option<&[u8]> {
    let (json, root) = checked(spec).ok()?;
    let ann = json.get_kind(root, b"annotations", Kind::Object).ok()??;
    let mut profile = None;
    for (k, v) in json.members(ann) {
        if k.contains(&b'\\') {
            return None; // an escaped key might be any request
        }
        if k.starts_with(b"gpu.") {
            if k != b"gpu.profile" || v.kind != Kind::String || profile.is_some() {
                return None;
            }
            profile = Some(json.text(v).ok()?);
        }
    }
    profile
}

/// Strings anywhere in the spec that make it the full wrapper's: env requests, Kubernetes
/// (sandboxes and pod-level selection), a Podman precreate grant. (Written with escapes, any
/// of them sits in a key or value this module refuses to read.)
const NOT_PLAIN: &[&[u8]] = &[b"GPUSHARE_", b"io.kubernetes", b"gpushare.lease"];

fn checked(spec: &[u8]) -> R<(Json<'_>, Node)> {
    if NOT_PLAIN.iter().any(|n| crate::scan::contains(spec, n)) {
        return Err(Refused);
    }
    crate::json::object(spec)
}

/// Refused unless `major` is a plain number that is none of the driver's majors (those of the
/// offer's nodes: the GPUs', nvidia-uvm's and nvidia-caps'). At most 9 digits: mknod and runc's
/// eBPF filter cut a number to 32 bits, so a longer one might be the driver's.
fn driver_major(json: &Json, major: Node, offer: &Offer) -> R<()> {
    let text = json.text(major)?;
    let plain = (1..=9).contains(&text.len()) && text.iter().all(u8::is_ascii_digit);
    if major.kind != Kind::Scalar || !plain {
        return Err(Refused);
    }
    for d in offer.devices() {
        if d.ok_or(Refused)?.major == text {
            return Err(Refused);
        }
    }
    Ok(())
}

/// Refused when an allow rule might open one of the driver's nodes, as runc reads the rule: a
/// missing type is every type, a missing major every major; a rule that only allows mknod
/// (`c *:* m`, which Docker and Podman add to every container) opens nothing. The full wrapper
/// judges the rest (`policy.allow_foreign_devices`), and the minor too.
fn opens_driver_nodes(json: &Json, rule: Node, offer: &Offer) -> R<()> {
    if rule.kind != Kind::Object {
        return Err(Refused);
    }
    let allow = json.get(rule, b"allow")?;
    if !allow.is_some_and(|a| a.kind == Kind::Scalar && json.text(a) == Ok(b"true")) {
        return Ok(());
    }
    let access = match json.get(rule, b"access")? {
        Some(a) if a.kind == Kind::String => json.text(a)?,
        _ => return Err(Refused),
    };
    if !access.is_empty() && access.iter().all(|&b| b == b'm') {
        return Ok(());
    }
    if let Some(t) = json.get(rule, b"type")? {
        if t.kind == Kind::String && json.text(t)? == b"b" {
            return Ok(());
        }
    }
    driver_major(json, json.get(rule, b"major")?.ok_or(Refused)?, offer)
}

/// Plan the edit of `spec` for `offer`; Refused unless every part of it is an addition.
pub fn plan(spec: &[u8], offers: &Offers, offer: &Offer) -> R<Plan> {
    let (json, root) = checked(spec)?;
    let mut plan = Plan {
        ops: [None; MAX_OPS],
        n: 0,
    };

    // Device nodes and their allow rules.
    if offer.devices().next().is_none() {
        return Err(Refused);
    }
    match json.get_kind(root, b"linux", Kind::Object)? {
        None => plan.append(&json, root, What::LinuxMember)?,
        Some(linux) => {
            match json.get_kind(linux, b"devices", Kind::Array)? {
                None => plan.append(&json, linux, What::DevicesMember)?,
                Some(list) => {
                    for d in offer.devices() {
                        let d = d.ok_or(Refused)?;
                        if json.any_names(list, b"path", d.path)? {
                            return Err(Refused);
                        }
                    }
                    // A node of the driver's the spec brings itself (another tenant's
                    // capability, at any path) is the full wrapper's to judge.
                    for e in json.elements(list) {
                        if e.kind != Kind::Object {
                            return Err(Refused);
                        }
                        if let Some(major) = json.get(e, b"major")? {
                            driver_major(&json, major, offer)?;
                        }
                    }
                    plan.append(&json, list, What::DeviceElems)?;
                }
            }
            match json.get_kind(linux, b"resources", Kind::Object)? {
                None => plan.append(&json, linux, What::ResourcesMember)?,
                Some(res) => match json.get_kind(res, b"devices", Kind::Array)? {
                    None => plan.append(&json, res, What::RulesMember)?,
                    Some(rules) => {
                        // A rule for one of these nodes might equal the one added (which the
                        // full wrapper would not add twice): left to it.
                        for d in offer.devices() {
                            let d = d.ok_or(Refused)?;
                            for e in json.elements(rules) {
                                if e.kind != Kind::Object {
                                    continue;
                                }
                                let is = |key: &[u8], want: &[u8]| -> R<bool> {
                                    Ok(match json.get(e, key)? {
                                        Some(v) => json.text(v)? == want,
                                        None => false,
                                    })
                                };
                                if is(b"major", d.major)? && is(b"minor", d.minor)? {
                                    return Err(Refused);
                                }
                            }
                        }
                        for e in json.elements(rules) {
                            opens_driver_nodes(&json, e, offer)?;
                        }
                        plan.append(&json, rules, What::RuleElems)?;
                    }
                },
            }
        }
    }

    // Env: the offer's variables are added; the path variables are added or extended.
    let mut path_envs: [Option<PathEnv>; MAX_PATH_ENVS] = [None; MAX_PATH_ENVS];
    for (i, pe) in offers.path_envs().enumerate() {
        *path_envs.get_mut(i).ok_or(Refused)? = Some(pe.ok_or(Refused)?);
    }
    let mut absent: u8 = 0;
    for (i, pe) in path_envs.iter().enumerate() {
        if pe.is_some() {
            absent |= 1 << i;
        }
    }
    match json.get_kind(root, b"process", Kind::Object)? {
        None => plan.append(&json, root, What::ProcessMember(absent))?,
        Some(process) => match json.get_kind(process, b"env", Kind::Array)? {
            None => plan.append(&json, process, What::EnvMember(absent))?,
            Some(env) => {
                for e in json.elements(env) {
                    if e.kind != Kind::String {
                        return Err(Refused);
                    }
                    let text = json.text(e)?;
                    let name = text.split(|&b| b == b'=').next().unwrap_or(text);
                    let has_eq = text.contains(&b'=');
                    for v in offer.env() {
                        let (k, _) = v.ok_or(Refused)?;
                        if has_eq && name == k {
                            return Err(Refused);
                        }
                    }
                    for (i, pe) in path_envs.iter().enumerate() {
                        let Some(pe) = pe else { continue };
                        let first = absent & (1 << i) != 0;
                        if first && has_eq && name == pe.name {
                            absent &= !(1 << i);
                            let value = e.start + 1 + name.len() + 1;
                            plan.push(Op {
                                at: e.start,
                                end: e.end,
                                what: What::EnvReplace(i, value, e.end - 1),
                                comma: false,
                                comma_after: false,
                            })?;
                        }
                    }
                }
                plan.append(&json, env, What::EnvElems(absent))?;
            }
        },
    }

    // Driver mounts.
    if offers.mounts().next().is_some() {
        match json.get_kind(root, b"mounts", Kind::Array)? {
            None => plan.append(&json, root, What::MountsMember)?,
            Some(list) => {
                for m in offers.mounts() {
                    let (dest, _) = m.ok_or(Refused)?;
                    if json.any_names(list, b"destination", dest)? {
                        return Err(Refused);
                    }
                }
                plan.append(&json, list, What::MountElems)?;
            }
        }
    }

    // The release hook.
    let (hook_path, _) = offers.hook().ok_or(Refused)?;
    match json.get_kind(root, b"hooks", Kind::Object)? {
        None => plan.append(&json, root, What::HooksMember)?,
        Some(hooks) => match json.get_kind(hooks, b"poststop", Kind::Array)? {
            None => plan.append(&json, hooks, What::PoststopMember)?,
            Some(list) => {
                if json.any_names(list, b"path", hook_path)? {
                    return Err(Refused);
                }
                // First, as the full wrapper puts it: runc stops at the first poststop hook
                // that fails, and the release must run.
                plan.prepend(&json, list, What::HookElem)?;
            }
        },
    }
    Ok(plan)
}

/// A bounded output buffer.
pub struct Out<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Out<'b> {
    pub fn new(buf: &'b mut [u8]) -> Out<'b> {
        Out { buf, len: 0 }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn put(&mut self, b: &[u8]) -> R<()> {
        let end = self.len.checked_add(b.len()).ok_or(Refused)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(Refused)?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

/// How much room [`write`] may need for `spec` and these offers.
pub fn room(spec: &[u8], offers_text: &[u8]) -> usize {
    2 * spec.len() + 4 * offers_text.len() + 4096
}

/// The edited spec.
pub fn write(spec: &[u8], plan: &Plan, offers: &Offers, offer: &Offer, out: &mut Out) -> R<()> {
    let mut at = 0;
    for op in plan.ops[..plan.n].iter().flatten() {
        out.put(&spec[at..op.at])?;
        if op.comma {
            out.put(b",")?;
        }
        emit(spec, op.what, offers, offer, out)?;
        if op.comma_after {
            out.put(b",")?;
        }
        at = op.end;
    }
    out.put(&spec[at..])
}

fn list<'x>(out: &mut Out, items: impl Iterator<Item = Option<&'x [u8]>>) -> R<()> {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.put(b",")?;
        }
        out.put(item.ok_or(Refused)?)?;
    }
    Ok(())
}

fn emit(spec: &[u8], what: What, offers: &Offers, offer: &Offer, out: &mut Out) -> R<()> {
    let devices = || offer.devices().map(|d| d.map(|d| d.json));
    let rules = || offer.devices().map(|d| d.map(|d| d.rule));
    let nth_path_env = |i: usize| offers.path_envs().nth(i).flatten().ok_or(Refused);
    match what {
        What::DeviceElems => list(out, devices()),
        What::RuleElems => list(out, rules()),
        What::DevicesMember => {
            out.put(b"\"devices\":[")?;
            list(out, devices())?;
            out.put(b"]")
        }
        What::RulesMember => {
            out.put(b"\"devices\":[")?;
            list(out, rules())?;
            out.put(b"]")
        }
        What::ResourcesMember => {
            out.put(b"\"resources\":{\"devices\":[")?;
            list(out, rules())?;
            out.put(b"]}")
        }
        What::LinuxMember => {
            out.put(b"\"linux\":{\"devices\":[")?;
            list(out, devices())?;
            out.put(b"],\"resources\":{\"devices\":[")?;
            list(out, rules())?;
            out.put(b"]}}")
        }
        What::EnvElems(absent) => {
            let mut first = true;
            for v in offer.env() {
                let (k, val) = v.ok_or(Refused)?;
                if !first {
                    out.put(b",")?;
                }
                first = false;
                out.put(b"\"")?;
                out.put(k)?;
                out.put(b"=")?;
                out.put(val)?;
                out.put(b"\"")?;
            }
            for i in 0..MAX_PATH_ENVS {
                if absent & (1 << i) == 0 {
                    continue;
                }
                let pe = nth_path_env(i)?;
                if !first {
                    out.put(b",")?;
                }
                first = false;
                path_value(out, &pe, pe.default)?;
            }
            Ok(())
        }
        What::EnvMember(absent) => {
            out.put(b"\"env\":[")?;
            emit(spec, What::EnvElems(absent), offers, offer, out)?;
            out.put(b"]")
        }
        What::ProcessMember(absent) => {
            out.put(b"\"process\":{\"env\":[")?;
            emit(spec, What::EnvElems(absent), offers, offer, out)?;
            out.put(b"]}")
        }
        What::EnvReplace(i, start, end) => {
            let pe = nth_path_env(i)?;
            path_value(out, &pe, &spec[start..end])
        }
        What::MountElems => list(out, offers.mounts().map(|m| m.map(|(_, j)| j))),
        What::MountsMember => {
            out.put(b"\"mounts\":[")?;
            list(out, offers.mounts().map(|m| m.map(|(_, j)| j)))?;
            out.put(b"]")
        }
        What::HookElem => out.put(offers.hook().ok_or(Refused)?.1),
        What::PoststopMember => {
            out.put(b"\"poststop\":[")?;
            out.put(offers.hook().ok_or(Refused)?.1)?;
            out.put(b"]")
        }
        What::HooksMember => {
            out.put(b"\"hooks\":{\"poststop\":[")?;
            out.put(offers.hook().ok_or(Refused)?.1)?;
            out.put(b"]}")
        }
    }
}

/// `"NAME=dirs"`: `current`'s folders without the injected one, which goes first or last.
fn path_value(out: &mut Out, pe: &PathEnv, current: &[u8]) -> R<()> {
    out.put(b"\"")?;
    out.put(pe.name)?;
    out.put(b"=")?;
    let mut first = true;
    if pe.prepend {
        out.put(pe.dir)?;
        first = false;
    }
    for part in current.split(|&b| b == b':') {
        if part.is_empty() || part == pe.dir {
            continue;
        }
        if !first {
            out.put(b":")?;
        }
        out.put(part)?;
        first = false;
    }
    if !pe.prepend {
        if !first {
            out.put(b":")?;
        }
        out.put(pe.dir)?;
    }
    out.put(b"\"")
}
