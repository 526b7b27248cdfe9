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
                    4 => "Operator",
                    _ => {
                        return Err(format!(
                            "{path}: access.roles may list buyer, supplier, inspector or \
                             operator; services are named in access.services"
                        ));
                    }
                };
                roles.push(format!("Role::{name}"));
            }
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
                 client_streaming: {}, server_streaming: {} }},",
                roles.join(", "),
                services.join(", "),
                method.is_client_streaming(),
                method.is_server_streaming()
            )
            .map_err(|e| e.to_string())?;
        }
    }
    out.push_str("];\n");
    Ok(out)
}

/// `impl IdempotentRequest` for every message with a string `idempotency_key`.
fn keyed_requests(pool: &DescriptorPool) -> String {
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
        let _ = writeln!(
            out,
            "impl IdempotentRequest for tradeassurance::{module}::{} {{ fn idempotency_key(&self) -> &str {{ &self.idempotency_key }} }}",
            message.name()
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
