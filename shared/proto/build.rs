//! Generates all protobuf and gRPC code from `proto/` with protox (no system
//! `protoc`), writes one encoded file descriptor set for gRPC reflection, and
//! derives two tables from the descriptors:
//!
//! * `access.rs`: who may call each RPC, from its `tradeassurance.common.v1.access`
//!   option. An RPC without the option fails the build: nothing is served by
//!   accident.
//! * `keyed.rs`: `IdempotentRequest` for every request message with an
//!   `idempotency_key` field, so the server pipeline reads the key without a
//!   hand-written list.

use std::{env, fmt::Write as _, fs, path::PathBuf};

use protox::prost_reflect::{DescriptorPool, Value};

/// Relative to this crate. `rerun-if-changed` names the files by this
/// relative path: cargo joins it to the package root of the build that checks
/// it, so a checkout sharing the target directory with another compares its
/// own files. An absolute path, outside the package root, would be stored as
/// it is and keep naming the checkout that ran the script last.
const PROTO_ROOT: &str = "../../proto";
const ACCESS_OPTION: &str = "tradeassurance.common.v1.access";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join(PROTO_ROOT);
    let root = root.canonicalize().unwrap_or(root);
    let mut files = Vec::new();
    collect_protos(&root, &mut files)?;
    files.sort();

    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap_or(file);
        println!(
            "cargo:rerun-if-changed={}",
            PathBuf::from(PROTO_ROOT).join(relative).display()
        );
    }

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded from the pool, so custom options (who may call) survive for
    // reflection; prost-types would drop them as unknown fields.
    fs::write(
        out_dir.join("tradeassurance_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let pool = compiler.descriptor_pool();
    fs::write(out_dir.join("access.rs"), access_table(&pool)?)?;
    fs::write(out_dir.join("keyed.rs"), keyed_requests(&pool))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// `pub const METHOD_ACCESS: &[MethodAccess]`, one entry per RPC of the platform.
fn access_table(pool: &DescriptorPool) -> Result<String, String> {
    let option = pool
        .get_extension_by_name(ACCESS_OPTION)
        .ok_or_else(|| format!("{ACCESS_OPTION} is not defined"))?;
    let mut out = String::from("pub const METHOD_ACCESS: &[MethodAccess] = &[\n");
    for service in pool.services() {
        if !service.full_name().starts_with("tradeassurance.") {
            continue;
        }
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let options = method.options();
            if !options.has_extension(&option) {
                return Err(format!(
                    "{path} has no ({ACCESS_OPTION}) option: declare who may call it"
                ));
            }
            let access = options.get_extension(&option);
            let access = access
                .as_message()
                .ok_or_else(|| format!("{path}: malformed access option"))?;
            let list = |field: &str| -> Vec<Value> {
                access
                    .get_field_by_name(field)
                    .and_then(|v| v.as_list().map(<[Value]>::to_vec))
                    .unwrap_or_default()
            };
            let mut roles = Vec::new();
            for role in list("roles") {
                let number = role.as_enum_number().unwrap_or_default();
                let name = match number {
                    1 => "Buyer",
                    2 => "Supplier",
                    3 => "Inspector",
                    6 => "TrustSafety",
                    7 => "Arbiter",
                    8 => "Finance",
                    9 => "Support",
                    10 => "Platform",
                    4 => {
                        return Err(format!(
                            "{path}: ROLE_OPERATOR is retired; name the staff duty the \
                             method needs (trust and safety, arbiter, finance, support)"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "{path}: access.roles may list people's roles and staff \
                             duties; services are named in access.services"
                        ));
                    }
                };
                roles.push(format!("Role::{name}"));
            }
            check_staff_mutation(&path, &method.input(), &roles)?;
            let services: Vec<String> = list("services")
                .iter()
                .filter_map(|s| s.as_str().map(|s| format!("{s:?}")))
                .collect();
            if roles.is_empty() && services.is_empty() {
                return Err(format!("{path}: the access option allows nobody"));
            }
            writeln!(
                out,
                "    MethodAccess {{ path: {path:?}, roles: &[{}], services: &[{}], \
                 mutating: {}, client_streaming: {}, server_streaming: {} }},",
                roles.join(", "),
                services.join(", "),
                method
                    .input()
                    .get_field_by_name("idempotency_key")
                    .is_some(),
                method.is_client_streaming(),
                method.is_server_streaming()
            )
            .map_err(|e| e.to_string())?;
        }
    }
    out.push_str("];\n");
    Ok(out)
}

/// Staff actions are audited with the reason given: a mutating method (its
/// request carries an idempotency key) that admits a staff duty must take a
/// `string reason`, and the read-only roles (support, platform) are admitted
/// to no mutating method.
fn check_staff_mutation(
    path: &str,
    input: &protox::prost_reflect::MessageDescriptor,
    roles: &[String],
) -> Result<(), String> {
    if input.get_field_by_name("idempotency_key").is_none() {
        return Ok(());
    }
    let admits = |role: &str| roles.iter().any(|r| r == role);
    if admits("Role::Support") || admits("Role::Platform") {
        return Err(format!(
            "{path} changes something: ROLE_SUPPORT and ROLE_PLATFORM only read"
        ));
    }
    let staff = ["Role::TrustSafety", "Role::Arbiter", "Role::Finance"];
    let has_reason = input
        .get_field_by_name("reason")
        .is_some_and(|f| matches!(f.kind(), protox::prost_reflect::Kind::String) && !f.is_list());
    if staff.iter().any(|r| admits(r)) && !has_reason {
        return Err(format!(
            "{path} admits a staff duty: its request needs a `string reason` for the audit trail"
        ));
    }
    Ok(())
}

/// `impl IdempotentRequest` for every message with a string `idempotency_key`:
/// the key, the reason a staff caller gives (its `string reason`, if any), and
/// the resource it acts on (its first `*_id` field, other than a principal's,
/// if any).
fn keyed_requests(pool: &DescriptorPool) -> String {
    use protox::prost_reflect::Kind;

    let mut out = String::new();
    for message in pool.all_messages() {
        let Some(package) = message.package_name().strip_prefix("tradeassurance.") else {
            continue;
        };
        if message.parent_message().is_some()
            || message.get_field_by_name("idempotency_key").is_none()
        {
            continue;
        }
        let module = package.replace('.', "::");
        let reason = match message.get_field_by_name("reason") {
            Some(f) if matches!(f.kind(), Kind::String) && !f.is_list() => "&self.reason",
            _ => "\"\"",
        };
        let resource = message
            .fields()
            .filter(|f| !f.is_list() && f.containing_oneof().is_none())
            .find(|f| {
                let name = f.name();
                (name == "id" || name.ends_with("_id")) && !name.ends_with("principal_id")
            })
            .and_then(|f| {
                let name = f.name();
                let kind = name.strip_suffix("_id").unwrap_or("row");
                match f.kind() {
                    Kind::String => Some(format!("({kind:?}, self.{name}.clone())")),
                    Kind::Int64 | Kind::Int32 | Kind::Uint64 | Kind::Uint32 => {
                        Some(format!("({kind:?}, self.{name}.to_string())"))
                    }
                    _ => None,
                }
            })
            .unwrap_or_else(|| "(\"\", String::new())".to_owned());
        let _ = writeln!(
            out,
            "impl IdempotentRequest for tradeassurance::{module}::{name} {{\n    \
             const TYPE_URL: &'static str = \"type.googleapis.com/{full}\";\n    \
             fn idempotency_key(&self) -> &str {{ &self.idempotency_key }}\n    \
             fn reason(&self) -> &str {{ {reason} }}\n    \
             fn resource(&self) -> (&'static str, String) {{ {resource} }}\n}}",
            name = message.name(),
            full = message.full_name(),
        );
    }
    out
}

fn collect_protos(dir: &PathBuf, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
