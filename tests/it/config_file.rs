//! The shipped `config/default.toml` documents exactly the built-in defaults.

use miteos_stream::Config;

const SHIPPED: &str = include_str!("../../config/default.toml");

#[test]
fn shipped_default_toml_equals_config_default() {
    // Strict parse: every key must be a real setting, and the values must be the defaults.
    let parsed: Config = toml::from_str(SHIPPED).expect("config/default.toml parses as Config");
    assert_eq!(parsed, Config::default());
}

#[test]
fn every_setting_is_documented_in_the_shipped_file() {
    for name in Config::setting_names() {
        let set = SHIPPED.lines().any(|l| l.starts_with(&format!("{name} = ")));
        let commented = SHIPPED.lines().any(|l| l.starts_with(&format!("# {name} = ")));
        assert!(set || commented, "setting `{name}` is missing from config/default.toml");
    }
}
