//! docs/cli.md documents every long flag, alias, environment variable and subcommand that
//! `devspire --help` shows, each in its command's section.

#[test]
fn cli_reference_documents_every_flag() {
    hpcs_test_support::cli_docs::check_binary(
        std::path::Path::new(env!("CARGO_BIN_EXE_devspire")),
        "devspire",
        &hpcs_test_support::cli_docs::doc_path(),
    );
}
