//! docs/cli.md documents every long flag, alias, environment variable and subcommand that
//! `hpcs-node --help` shows, each in its command's section.

#[test]
fn cli_reference_documents_every_flag() {
    hpcs_test_support::cli_docs::check_binary(
        std::path::Path::new(env!("CARGO_BIN_EXE_hpcs-node")),
        "hpcs-node",
        &hpcs_test_support::cli_docs::doc_path(),
    );
}
