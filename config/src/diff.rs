//! What a reload would change: `meshgate check --diff OLD NEW`, and the log
//! line written when a reload is applied.

use std::collections::BTreeMap;
use std::fmt;

use crate::snapshot::{ListenerSpec, ServiceSpec, Snapshot};
use crate::validate::{endpoint_set, split_weights};

/// Added, removed or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Only in the new config.
    Added,
    /// Only in the old config.
    Removed,
    /// In both, different.
    Changed,
}

/// One changed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `listener`, `route`, `service`, `jwt_provider`, `admin`, `mesh` or
    /// `observability`.
    pub section: &'static str,
    /// The item's name.
    pub name: String,
    /// What happened to it.
    pub kind: ChangeKind,
    /// Details of a change, one per line (e.g. `split v2: 5% -> 10%`).
    pub details: Vec<String>,
}

/// Everything that differs between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Changes, grouped by section in a fixed order.
    pub changes: Vec<Change>,
}

impl ConfigDiff {
    /// Compares two snapshots.
    pub fn between(old: &Snapshot, new: &Snapshot) -> Self {
        let mut changes = Vec::new();
        compare(
            &mut changes,
            "listener",
            named(&old.listeners, |l| &l.name),
            named(&new.listeners, |l| &l.name),
            listener_details,
        );
        compare(
            &mut changes,
            "route",
            named(&old.routes, |r| &r.name),
            named(&new.routes, |r| &r.name),
            |a, b| {
                let mut d = Vec::new();
                if a.description != b.description {
                    d.push(format!("{} => {}", a.description, b.description));
                }
                if a.listeners != b.listeners {
                    d.push(format!("listeners {:?} => {:?}", a.listeners, b.listeners));
                }
                d
            },
        );
        compare(
            &mut changes,
            "service",
            named(&old.services, |s| &s.name),
            named(&new.services, |s| &s.name),
            |a, b| service_details(a, b),
        );
        compare(
            &mut changes,
            "jwt_provider",
            old.jwt_providers
                .iter()
                .map(|(k, v)| (k.clone(), v))
                .collect(),
            new.jwt_providers
                .iter()
                .map(|(k, v)| (k.clone(), v))
                .collect(),
            debug_details,
        );
        let singletons: [(&'static str, String, String); 3] = [
            (
                "admin",
                format!("{:?}", old.admin),
                format!("{:?}", new.admin),
            ),
            ("mesh", format!("{:?}", old.mesh), format!("{:?}", new.mesh)),
            (
                "observability",
                format!("{:?}", old.observability),
                format!("{:?}", new.observability),
            ),
        ];
        for (section, a, b) in singletons {
            if a != b {
                changes.push(Change {
                    section,
                    name: section.to_owned(),
                    kind: ChangeKind::Changed,
                    details: vec!["settings changed".to_owned()],
                });
            }
        }
        ConfigDiff { changes }
    }

    /// No differences.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Changes that a running process cannot apply without restarting
    /// (listener sockets and the admin address are bound at start).
    pub fn needs_restart(&self) -> Vec<&Change> {
        self.changes
            .iter()
            .filter(|c| {
                (c.section == "listener"
                    && (c.kind != ChangeKind::Changed
                        || c.details
                            .iter()
                            .any(|d| !d.starts_with("routes") && !d.starts_with("certificates"))))
                    || (c.section == "admin")
            })
            .collect()
    }
}

impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return writeln!(f, "no changes");
        }
        for c in &self.changes {
            let sign = match c.kind {
                ChangeKind::Added => '+',
                ChangeKind::Removed => '-',
                ChangeKind::Changed => '~',
            };
            writeln!(f, "{sign} {} {}", c.section, c.name)?;
            for d in &c.details {
                writeln!(f, "    {d}")?;
            }
        }
        Ok(())
    }
}

fn named<T>(items: &[T], name: impl Fn(&T) -> &String) -> BTreeMap<String, &T> {
    items.iter().map(|i| (name(i).clone(), i)).collect()
}

fn compare<T>(
    out: &mut Vec<Change>,
    section: &'static str,
    old: BTreeMap<String, T>,
    new: BTreeMap<String, T>,
    details: impl Fn(&T, &T) -> Vec<String>,
) {
    for (name, o) in &old {
        match new.get(name) {
            None => out.push(Change {
                section,
                name: name.clone(),
                kind: ChangeKind::Removed,
                details: Vec::new(),
            }),
            Some(n) => {
                let d = details(o, n);
                if !d.is_empty() {
                    out.push(Change {
                        section,
                        name: name.clone(),
                        kind: ChangeKind::Changed,
                        details: d,
                    });
                }
            }
        }
    }
    for name in new.keys().filter(|k| !old.contains_key(*k)) {
        out.push(Change {
            section,
            name: name.clone(),
            kind: ChangeKind::Added,
            details: Vec::new(),
        });
    }
}

fn listener_details(a: &&ListenerSpec, b: &&ListenerSpec) -> Vec<String> {
    let mut d = Vec::new();
    if a.address != b.address {
        d.push(format!("address {} => {}", a.address, b.address));
    }
    if a.protocols != b.protocols {
        d.push(format!(
            "protocols {} => {}",
            a.protocols.words().join(","),
            b.protocols.words().join(",")
        ));
    }
    match (&a.tls, &b.tls) {
        (Some(x), Some(y)) => {
            if x.certificates != y.certificates {
                d.push("certificates changed (reloaded in place)".to_owned());
            }
            if x.min_version != y.min_version || x.client_auth != y.client_auth {
                d.push("tls settings changed".to_owned());
            }
        }
        (None, None) => {}
        _ => d.push("tls turned on or off".to_owned()),
    }
    if format!("{:?}", a.limits) != format!("{:?}", b.limits) {
        d.push("limits changed".to_owned());
    }
    if a.http3 != b.http3 {
        d.push("http3 settings changed".to_owned());
    }
    let names = |l: &ListenerSpec| -> Vec<String> {
        l.routes.routes().iter().map(|r| r.name.clone()).collect()
    };
    if names(a) != names(b) {
        d.push(format!("routes {:?} => {:?}", names(a), names(b)));
    }
    d
}

fn service_details(a: &ServiceSpec, b: &ServiceSpec) -> Vec<String> {
    let mut d = Vec::new();
    let (wa, wb) = (split_weights(a), split_weights(b));
    for (subset, w) in &wb {
        match wa.get(subset) {
            Some(old) if old != w => d.push(format!("split {subset}: {old}% => {w}%")),
            None => d.push(format!("split {subset}: added at {w}%")),
            _ => {}
        }
    }
    for (subset, w) in &wa {
        if !wb.contains_key(subset) {
            d.push(format!("split {subset}: removed (was {w}%)"));
        }
    }
    let (ea, eb) = (endpoint_set(a), endpoint_set(b));
    for e in eb.difference(&ea) {
        d.push(format!("endpoint {e} added"));
    }
    for e in ea.difference(&eb) {
        d.push(format!("endpoint {e} removed"));
    }
    if a.lb != b.lb {
        d.push(format!("lb {:?} => {:?}", a.lb, b.lb));
    }
    // Anything else: one generic line rather than silence.
    let rest = |s: &ServiceSpec| {
        format!(
            "{:?}{:?}{:?}{:?}{:?}{:?}{:?}{:?}{:?}{:?}{:?}{:?}",
            s.discovery,
            s.subsets,
            s.split.as_ref().map(|x| (&x.sticky, &x.override_header)),
            s.hash_on,
            s.protocol,
            s.tls,
            s.connect_timeout,
            s.idle_timeout,
            s.limits,
            s.outlier,
            s.retry_budget,
            s.callers
        )
    };
    if rest(a) != rest(b) || a.endpoints != b.endpoints && d.is_empty() {
        d.push("other settings changed".to_owned());
    }
    d
}

fn debug_details<T: fmt::Debug>(a: &T, b: &T) -> Vec<String> {
    if format!("{a:?}") == format!("{b:?}") {
        Vec::new()
    } else {
        vec!["settings changed".to_owned()]
    }
}
