//! ARCHITECTURE.md's call graph matches the code: every gRPC call one service
//! makes to another (through its outbox, with a typed client, or by pulling a
//! feed) is an edge of the diagram with the method on its label, and the
//! diagram shows no call the code does not make.
//!
//! The calls are read from the services' sources, the methods from the protos,
//! so a new call, a removed one or a renamed method fails here until the
//! diagram says the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use e2e_tests::repo_root;

/// (caller, called, method), services named as their crates are.
type Call = (String, String, String);

/// The proto package each service serves.
const SERVED: [(&str, &str); 4] = [
    ("supplier-registry", "tradeassurance/supplier/v1"),
    ("contract", "tradeassurance/contract/v1"),
    ("escrow", "tradeassurance/escrow/v1"),
    ("dispute", "tradeassurance/dispute/v1"),
];

/// Every RPC name each service serves, from its protos.
fn served_methods(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    SERVED
        .iter()
        .map(|(service, dir)| {
            let mut methods = BTreeSet::new();
            for file in files(&root.join("proto").join(dir), "proto") {
                let text = fs::read_to_string(&file).expect("proto readable");
                methods.extend(text.lines().filter_map(|line| {
                    let rest = line.trim_start().strip_prefix("rpc ")?;
                    Some(word(rest.trim_start()).to_owned())
                }));
            }
            assert!(
                !methods.is_empty(),
                "no rpc found for {service} in proto/{dir}"
            );
            ((*service).to_owned(), methods)
        })
        .collect()
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn snake_case(method: &str) -> String {
    let mut out = String::new();
    for (i, ch) in method.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Which service a path constant or helper of the sources names
/// (`ESCROW_PATH`, `REGISTRY_CALLS`, `SupplierRegistryServiceClient`...).
fn service_named(word: &str) -> Option<&'static str> {
    let word = word.to_ascii_lowercase();
    [
        ("registry", "supplier-registry"),
        ("supplier", "supplier-registry"),
        ("contract", "contract"),
        ("escrow", "escrow"),
        ("dispute", "dispute"),
    ]
    .into_iter()
    .find(|(needle, _)| word.contains(needle))
    .map(|(_, service)| service)
}

/// The leading identifier of `text` (letters, digits, `_`).
fn word(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The identifier ending where `text` ends.
fn word_before(text: &str) -> &str {
    let start = text
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    &text[start..]
}

/// What follows each occurrence of `needle` in `text`.
fn after<'a>(text: &'a str, needle: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.match_indices(needle)
        .map(move |(i, _)| &text[i + needle.len()..])
}

/// The (called service, method) pairs a source file names, in the forms
/// calls take in the services.
fn calls_in_source(
    text: &str,
    methods: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    // An outbox call: "{ESCROW_PATH}FreezeEscrow".
    for rest in after(text, "\"{") {
        let constant = word(rest);
        if let (Some(prefix), Some(tail)) = (
            constant.strip_suffix("_PATH"),
            rest[constant.len()..].strip_prefix('}'),
        ) && let Some(called) = service_named(prefix)
            && tail.contains('"')
        {
            found.push((called, word(tail).to_owned()));
        }
    }
    // Through the outbox: self.outbox.call(tx, &REGISTRY_CALLS, "ReserveCover", ...).
    for rest in after(text, ".call(") {
        let args = rest.trim_start();
        let first = word(args);
        let Some(second) = args[first.len()..].trim_start().strip_prefix(',') else {
            continue;
        };
        let callee = word(second.trim_start().trim_start_matches('&'));
        let Some(third) = second
            .trim_start()
            .trim_start_matches('&')
            .get(callee.len()..)
            .and_then(|t| t.trim_start().strip_prefix(','))
        else {
            continue;
        };
        if let Some(quoted) = third.trim_start().strip_prefix('"')
            && callee.ends_with("_CALLS")
            && let Some(called) = service_named(callee)
        {
            found.push((called, word(quoted).to_owned()));
        }
    }
    // A call built as a value: Call { callee: &ESCROW_CALLS, method: "FreezeEscrow", .. }.
    for rest in after(text, "callee: &") {
        let callee = word(rest);
        if let Some(called) = service_named(callee).filter(|_| callee.ends_with("_CALLS"))
            && let Some(method) = rest[callee.len()..]
                .trim_start()
                .strip_prefix(',')
                .and_then(|r| r.trim_start().strip_prefix("method: \""))
        {
            found.push((called, word(method).to_owned()));
        }
    }
    // A full path, as feeds are pulled: "/tradeassurance.escrow.v1.EscrowService/StreamEscrowEvents".
    for rest in after(text, "\"/tradeassurance.") {
        let package = word(rest);
        if let Some(service) = service_named(package)
            && let Some((_, method)) = rest.split('"').next().and_then(|p| p.rsplit_once('/'))
        {
            found.push((service, word(method).to_owned()));
        }
    }
    // A typed client: ContractServiceClient::new(..), then client.get_contract(..).
    let clients: BTreeSet<&str> = text
        .match_indices("ServiceClient::new")
        .filter_map(|(i, _)| service_named(word_before(&text[..i])))
        .collect();
    for called in clients {
        let by_snake: BTreeMap<String, &String> =
            methods[called].iter().map(|m| (snake_case(m), m)).collect();
        for rest in after(text, ".") {
            let name = word(rest);
            if rest[name.len()..].starts_with('(')
                && let Some(method) = by_snake.get(name)
            {
                found.push((called, (*method).clone()));
            }
        }
    }
    found
}

/// The calls each service's sources make to the others.
fn calls_in_code(root: &Path, methods: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Call> {
    let mut calls = BTreeSet::new();
    for (caller, _) in SERVED {
        for file in files(&root.join("services").join(caller).join("src"), "rs") {
            let text = fs::read_to_string(&file).expect("source readable");
            for (called, method) in calls_in_source(&text, methods) {
                // `{ESCROW_PATH}{method}` is the helper itself, not a call.
                if called == caller || method.is_empty() {
                    continue;
                }
                assert!(
                    methods[called].contains(&method),
                    "{}: calls {called}'s {method}, which {called}'s protos do not serve",
                    file.display()
                );
                calls.insert((caller.to_owned(), called.to_owned(), method));
            }
        }
    }
    calls
}

/// The edges between the four services in ARCHITECTURE.md's call-graph
/// flowchart (the one under "Calls and events"), one per method on a label.
fn calls_in_diagram(
    text: &str,
    methods: &BTreeMap<String, BTreeSet<String>>,
) -> Result<BTreeSet<Call>, String> {
    let section = text
        .split("\n## Calls and events")
        .nth(1)
        .ok_or("ARCHITECTURE.md has no \"## Calls and events\" section")?;
    let chart = section
        .split("```mermaid")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .ok_or("the \"Calls and events\" section has no mermaid diagram")?;
    // Nodes: `SR["supplier-registry<br/>(leaf)"]`.
    let names: BTreeMap<&str, &str> = chart
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let id = word(line);
            let label = line[id.len()..].strip_prefix("[\"")?;
            let end = label.find(['"', '<'])?;
            Some((id, label[..end].trim()))
        })
        .collect();
    // Edges: `C -->|"ReserveCover, ..."| SR` or `C -.->|"pulls ..."| E`.
    let edges = chart.lines().filter_map(|line| {
        let line = line.trim_start();
        let from = word(line);
        let rest = line[from.len()..].trim_start();
        let rest = rest
            .strip_prefix("-->")
            .or_else(|| rest.strip_prefix("-.->"))?
            .trim_start()
            .strip_prefix("|\"")?;
        let (label, rest) = rest.split_once("\"|")?;
        Some((from, label, word(rest.trim_start())))
    });
    let mut calls = BTreeSet::new();
    for (from, label, to) in edges {
        let (Some(caller), Some(called)) = (names.get(from), names.get(to)) else {
            continue;
        };
        let (Some(served), true) = (methods.get(*called), methods.contains_key(*caller)) else {
            // Edges to or from the gateway, the ingress or the clients.
            continue;
        };
        for method in label.replace("<br/>", " ").split([',', ' ']) {
            let method = method.trim();
            if method.is_empty() || method == "pulls" {
                continue;
            }
            if !served.contains(method) {
                return Err(format!(
                    "the edge {caller} -> {called} names {method:?}, not an rpc of {called}"
                ));
            }
            calls.insert((
                (*caller).to_owned(),
                (*called).to_owned(),
                method.to_owned(),
            ));
        }
    }
    Ok(calls)
}

#[test]
fn the_call_graph_in_architecture_md_shows_every_call_between_services_in_the_code() {
    let root = repo_root();
    let methods = served_methods(&root);
    let in_code = calls_in_code(&root, &methods);
    let architecture = fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let in_diagram = calls_in_diagram(&architecture, &methods).unwrap_or_else(|e| panic!("{e}"));

    // The reading of the code found the calls we know are there.
    for known in [
        ("contract", "supplier-registry", "ReserveCover"),
        ("contract", "escrow", "StreamEscrowEvents"),
        ("dispute", "contract", "GetContract"),
        ("dispute", "escrow", "SettleClaim"),
    ] {
        let known = (known.0.into(), known.1.into(), known.2.into());
        assert!(
            in_code.contains(&known),
            "the code scan missed {known:?}: {in_code:#?}"
        );
    }
    let missing: Vec<_> = in_code.difference(&in_diagram).collect();
    let extra: Vec<_> = in_diagram.difference(&in_code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "ARCHITECTURE.md's call graph and the code disagree.\n\
         Called in the code, missing from the diagram: {missing:#?}\n\
         In the diagram, never called in the code: {extra:#?}"
    );
}

#[test]
fn the_diagram_reader_refuses_a_label_that_is_no_rpc() {
    let root = repo_root();
    let methods = served_methods(&root);
    let chart = "## Calls and events\n```mermaid\nflowchart LR\n    C[\"contract\"]\n    E[\"escrow\"]\n    C -->|\"OpenEscrowAccount, PayEverything\"| E\n```\n";
    let error = calls_in_diagram(&format!("\n{chart}"), &methods).unwrap_err();
    assert!(error.contains("PayEverything"), "{error}");
    let fine = chart.replace(", PayEverything", "");
    let calls = calls_in_diagram(&format!("\n{fine}"), &methods).expect("a valid chart");
    assert_eq!(
        calls.into_iter().collect::<Vec<_>>(),
        vec![(
            "contract".into(),
            "escrow".into(),
            "OpenEscrowAccount".into()
        )]
    );
}

/// What the protos' access options grant services: (caller, called, method)
/// for every name in an RPC's `services: [...]`.
fn granted_to_services(root: &Path) -> BTreeSet<Call> {
    let mut granted = BTreeSet::new();
    for (called, dir) in SERVED {
        for file in files(&root.join("proto").join(dir), "proto") {
            let text = fs::read_to_string(&file).expect("proto readable");
            let mut method = None;
            for line in text.lines().map(str::trim_start) {
                if let Some(rest) = line.strip_prefix("rpc ") {
                    method = Some(word(rest.trim_start()).to_owned());
                } else if let (Some(list), Some(method)) = (line.strip_prefix("services:"), &method)
                {
                    for caller in list.split('"').skip(1).step_by(2) {
                        granted.insert((caller.to_owned(), called.to_owned(), method.clone()));
                    }
                }
            }
        }
    }
    granted
}

/// Service principals from outside the platform, whose calls no source here
/// makes: the payment gateway (its webhooks may arrive over gRPC, through an
/// ingress speaking for it).
const OUTSIDE_PRINCIPALS: [&str; 1] = ["payment-gateway"];

/// Least privilege: a service may call exactly what its code calls. An access
/// option that grants a service more (a method it never calls, a service that
/// does not exist) fails here, and so does a call the access options refuse.
#[test]
fn access_options_grant_services_exactly_the_calls_their_code_makes() {
    let root = repo_root();
    let methods = served_methods(&root);
    let in_code = calls_in_code(&root, &methods);
    let granted = granted_to_services(&root);
    assert!(
        granted.contains(&(
            "contract".into(),
            "supplier-registry".into(),
            "ReserveCover".into()
        )),
        "the proto reader found no grant: {granted:#?}"
    );
    let unused: Vec<_> = granted
        .difference(&in_code)
        .filter(|(caller, _, _)| !OUTSIDE_PRINCIPALS.contains(&caller.as_str()))
        .collect();
    let refused: Vec<_> = in_code.difference(&granted).collect();
    assert!(
        unused.is_empty() && refused.is_empty(),
        "the access options and the code disagree.\n\
         Granted to a service whose code never calls it: {unused:#?}\n\
         Called in the code, refused by the access options: {refused:#?}"
    );
}
