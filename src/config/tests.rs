//! Config unit tests: parsing, layering, validation, and that errors name the setting.

use super::*;

#[test]
fn durations_accept_text_and_seconds() {
    let c =
        Config::from_toml_str("auth_timeout = \"250ms\"\nping_interval = 3\npong_timeout = 1.5")
            .unwrap();
    assert_eq!(c.auth_timeout, Duration::from_millis(250));
    assert_eq!(c.ping_interval, Duration::from_secs(3));
    assert_eq!(c.pong_timeout, Duration::from_millis(1500));
}

#[test]
fn unknown_setting_and_bad_value_are_named() {
    let e = Config::from_toml_str("auth_timout = \"1s\"").unwrap_err();
    assert!(e.to_string().contains("auth_timout"), "{e}");
    let e = Config::from_toml_str("auth_timeout = \"soon\"").unwrap_err();
    assert!(e.to_string().contains("soon"), "{e}");
}

#[test]
fn validation_names_the_setting() {
    let c = Config { max_header_bytes: 10, ..Config::default() };
    assert_eq!(c.validate().unwrap_err().setting, "max_header_bytes");
    let c = Config { ping_interval: Duration::ZERO, ..Config::default() };
    assert_eq!(c.validate().unwrap_err().setting, "ping_interval");
    let c = Config { auth_timeout: Duration::from_secs(u64::MAX / 2), ..Config::default() };
    assert_eq!(c.validate().unwrap_err().setting, "auth_timeout");
    assert!(Config::from_toml_str("ping_interval = 1e12").is_ok_and(|c| c.validate().is_err()));
    assert!(
        Config::from_toml_str("ping_interval = 1e20").is_err(),
        "too large for a Duration: an error, not a panic"
    );
    assert!(Config::from_toml_str("ping_interval = -1.0").is_err());
    let c = Config { redis_url: Some("http://x".into()), ..Config::default() };
    assert_eq!(c.validate().unwrap_err().setting, "redis_url");
    let c = Config { redis_url: Some("rediss://h:6380".into()), ..Config::default() };
    let e = c.validate().unwrap_err();
    assert!(e.setting == "redis_url" && e.message.contains("TLS"), "{e}");
    // One Redis or a cluster, never both; every seed is a redis:// URL.
    let both = Config {
        redis_url: Some("redis://a:6379".into()),
        redis_cluster: Some("redis://b:7000".into()),
        ..Config::default()
    };
    let e = both.validate().unwrap_err();
    assert!(e.setting == "redis_cluster" && e.message.contains("not both"), "{e}");
    for bad in ["", " , ", "redis://a:7000,http://b:7001", "rediss://a:7000"] {
        let c = Config { redis_cluster: Some(bad.into()), ..Config::default() };
        assert_eq!(c.validate().unwrap_err().setting, "redis_cluster", "{bad:?}");
    }
    let c = Config {
        redis_cluster: Some("redis://a:7000, redis://b:7001,".into()),
        ..Config::default()
    };
    assert!(c.validate().is_ok() && c.redis_mode());
    assert_eq!(c.cluster_seeds(), ["redis://a:7000", "redis://b:7001"]);
    assert!(Config::default().validate().is_ok());
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn layers_apply_in_order_defaults_file_env_flags() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "c.toml",
            "auth_timeout = \"1s\"\nping_interval = \"2s\"\nlisten = \"127.0.0.1:1\"\n",
        )?;
        jail.set_env("MITEOS_PING_INTERVAL", "3s");
        jail.set_env("MITEOS_LISTEN", "127.0.0.1:2");
        jail.set_env("MITEOS_UNRELATED", "ignored"); // other MITEOS_* variables are not settings
        let flags =
            Flags { listen: Some("127.0.0.1:3".parse().expect("addr")), ..Flags::default() };
        let c = Config::load(Some(Path::new("c.toml")), &flags).map_err(|e| e.to_string())?;
        assert_eq!(c.auth_timeout, Duration::from_secs(1)); // file over default
        assert_eq!(c.ping_interval, Duration::from_secs(3)); // env over file
        assert_eq!(c.listen.port(), 3); // flag over env
        assert_eq!(c.pong_timeout, Config::default().pong_timeout); // untouched default
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn env_errors_name_the_setting() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("MITEOS_MAX_MESSAGE_BYTES", "lots");
        let e = Config::load(None, &Flags::default()).expect_err("bad value");
        assert_eq!(e.setting, "max_message_bytes");
        assert_eq!(e.to_string().lines().count(), 1);
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn errors_never_quote_a_secret_setting() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("MITEOS_ADMIN_TOKEN", "1234567890123456");
        let e = Config::load(None, &Flags::default()).expect_err("a number is not a token");
        assert_eq!(e.setting, "admin_token");
        assert!(!e.to_string().contains("1234567890123456"), "{e}");
        Ok(())
    });
}

#[test]
fn a_missing_config_file_is_an_error() {
    let e =
        Config::load(Some(Path::new("/nonexistent/miteos.toml")), &Flags::default()).unwrap_err();
    assert_eq!(e.setting, "--config");
}

#[test]
fn setting_names_cover_every_field() {
    let names = Config::setting_names();
    assert!(names.contains(&"redis_url".to_owned()) && names.contains(&"auth_timeout".to_owned()));
    assert_eq!(names.len(), 48);
}
