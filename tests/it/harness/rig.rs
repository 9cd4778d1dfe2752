//! The setups most tests share, each in one piece.

use super::{Config, Gateway, HOT_RULE, Launch, Mosquitto, Proxy, Pty, Subscriber, WAIT, tempdir};

/// Where a gateway with the test config (gateway id `test-gw`) publishes alerts.
pub const ALERTS: &str = "outpost/test-gw/alerts/#";

/// An upstream broker, a serial port (a pseudo-terminal) for a JSON
/// sensor, a subscriber to the alerts, and the gateway with `HOT_RULE`
/// reading that port (open once `start` returns). Dropped in this order.
pub struct SerialRig {
    pub gw: Gateway,
    pub sub: Subscriber,
    pub pty: Pty,
    /// A second port, for a key=value sensor (`start_with_kv`).
    pub kv: Option<Pty>,
    /// Between the gateway and `up` (`start_proxied`).
    pub proxy: Option<Proxy>,
    pub up: Mosquitto,
    pub dir: tempfile::TempDir,
}

impl SerialRig {
    pub fn start() -> SerialRig {
        SerialRig::start_with(Launch::default(), |c| c)
    }

    /// With this launch, and the config `edit` makes of the usual one
    /// (upstream `up`, the port as `[[serial]]` `bench`, JSON, sensor `bench`).
    pub fn start_with(launch: Launch, edit: impl FnOnce(Config) -> Config) -> SerialRig {
        SerialRig::start_ports(launch, edit, false, None)
    }

    /// With a second port, `[[serial]]` `shelf` (`kv`), kv format, sensor `shelf`.
    pub fn start_with_kv(launch: Launch) -> SerialRig {
        SerialRig::start_ports(launch, |c| c, true, None)
    }

    /// With the upstream link through a proxy, which `prepare` sets up
    /// before the gateway starts.
    pub fn start_proxied(prepare: impl Fn(&Proxy)) -> SerialRig {
        SerialRig::start_ports(Launch::default(), |c| c, false, Some(&prepare))
    }

    /// The proxy (`start_proxied`).
    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("started without a proxy")
    }

    fn start_ports(
        launch: Launch,
        edit: impl FnOnce(Config) -> Config,
        with_kv: bool,
        proxied: Option<&dyn Fn(&Proxy)>,
    ) -> SerialRig {
        let dir = tempdir();
        let up = Mosquitto::start();
        let pty = Pty::new(dir.path(), "tty");
        let kv = with_kv.then(|| Pty::new(dir.path(), "tty-kv"));
        let sub = Subscriber::connect(up.port(), ALERTS);
        let proxy = proxied.map(|prepare| {
            let p = Proxy::start(up.port());
            prepare(&p);
            p
        });
        let url = proxy.as_ref().map_or_else(|| up.url(), Proxy::url);
        let mut cfg = Config::new(&url).serial("bench", pty.path(), "json", "bench");
        if let Some(kv) = &kv {
            cfg = cfg.serial("shelf", kv.path(), "kv", "shelf");
        }
        let mut gw = launch.start(dir.path(), &edit(cfg).toml(), HOT_RULE);
        for port in std::iter::once(&pty).chain(&kv) {
            gw.wait_open(&port.device(), WAIT);
        }
        SerialRig {
            gw,
            sub,
            pty,
            kv,
            proxy,
            up,
            dir,
        }
    }

    /// The second port (`start_with_kv`).
    pub fn kv(&mut self) -> &mut Pty {
        self.kv.as_mut().expect("started without a kv port")
    }

    /// Writes `line` to the second port until an alert for `sensor` in
    /// `state` arrives.
    pub fn alert_kv(&mut self, line: &str, sensor: &str, state: &str) -> super::Msg {
        let kv = self.kv.as_mut().expect("started without a kv port");
        kv.write_until_alert(&mut self.sub, line, sensor, state)
    }

    /// Writes `line` until an alert for `sensor` in `state` arrives.
    pub fn alert(&mut self, line: &str, sensor: &str, state: &str) -> super::Msg {
        self.pty
            .write_until_alert(&mut self.sub, line, sensor, state)
    }
}

/// A gateway reading JSON from `sensors/+/reading` on a local broker with
/// the given rules, an upstream broker, and a subscriber to the alerts.
/// Dropped in this order.
pub struct MqttRig {
    pub gw: Gateway,
    pub sub: Subscriber,
    pub local: Mosquitto,
    /// Upstream: what `sub` listens to.
    _up: Mosquitto,
    pub dir: tempfile::TempDir,
}

/// The topics `MqttRig`'s gateway reads.
const READINGS: &str = "sensors/+/reading";

impl MqttRig {
    pub fn start(rules: &str) -> MqttRig {
        MqttRig::start_with(rules, |c| c)
    }

    /// With the config `edit` makes of the usual one.
    pub fn start_with(rules: &str, edit: impl FnOnce(Config) -> Config) -> MqttRig {
        let dir = tempdir();
        let up = Mosquitto::start();
        let local = Mosquitto::start();
        let sub = Subscriber::connect(up.port(), ALERTS);
        let cfg = edit(Config::new(&up.url()).mqtt("local", &local.url(), &[READINGS]));
        let gw = Gateway::start(dir.path(), &cfg.toml(), rules);
        MqttRig {
            gw,
            sub,
            local,
            _up: up,
            dir,
        }
    }

    /// Publishes `payload` on `topic` of the local broker until an alert
    /// for `sensor` in `state` arrives (the source may subscribe late).
    pub fn alert(&mut self, topic: &str, payload: &str, sensor: &str, state: &str) -> super::Msg {
        self.sub
            .publish_until_alert(self.local.port(), topic, payload, sensor, state)
    }
}
