use clap::{Parser, Subcommand};
use portcullis::mint::{self, MintOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: portcullis::allocator::Allocator = portcullis::allocator::Allocator;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A JWT-verifying API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Validate a config file, like `nginx -t`.
    Check {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Why would this request get the answer it gets? Runs the compiled policy on a described
    /// request (nothing is sent) and prints every check: route, limits, each policy's checks,
    /// rules, pool, forwarded headers, status and WWW-Authenticate.
    Explain {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "localhost")]
        host: String,
        /// The client's address, for IP-keyed limits and `client.ip` in expressions.
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: std::net::IpAddr,
        /// Sent as `Authorization: Bearer TOKEN`.
        #[arg(long)]
        token: Option<String>,
        /// A request header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Do not fetch remote key sets (their tokens then get 503).
        #[arg(long)]
        offline: bool,
        /// Path and query, as on the request line: /api/users?id=1
        path: String,
    },
    /// Validate a config file, then tell the running gateway (by `server.pid_file`) to reload.
    Reload {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Revoke a subject or a token id on every instance (`revocation.shared`), or list them.
    Revoke {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        #[arg(long, conflicts_with_all = ["jti", "list"])]
        sub: Option<String>,
        #[arg(long, conflicts_with = "list")]
        jti: Option<String>,
        /// Until when, RFC 3339 (2026-12-31T00:00:00Z).
        #[arg(long, conflicts_with_all = ["ttl", "list"])]
        until: Option<String>,
        /// For how long, like 24h (the default): at least the longest lifetime of a token.
        #[arg(long, conflicts_with = "list")]
        ttl: Option<String>,
        /// Show what is revoked now, with expiry times.
        #[arg(long)]
        list: bool,
    },
    /// Mint a signed test token.
    Token {
        /// Private key: PEM (RSA, EC, Ed25519) or a private JWK/JWKS (`--kid` picks the key).
        #[arg(long, conflicts_with = "secret")]
        key: Option<PathBuf>,
        /// HMAC secret.
        #[arg(long)]
        secret: Option<String>,
        /// The secret is base64 (standard or URL-safe).
        #[arg(long, requires = "secret")]
        base64: bool,
        /// Algorithm (default: HS256 for secrets, RS256/ES256/EdDSA from the key type).
        #[arg(long)]
        alg: Option<String>,
        #[arg(long)]
        kid: Option<String>,
        #[arg(long)]
        sub: Option<String>,
        #[arg(long)]
        iss: Option<String>,
        /// Audience; repeat for several.
        #[arg(long)]
        aud: Vec<String>,
        /// Lifetime, like 1h or 30m; 0 for no `exp`.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Extra claim NAME=VALUE; VALUE is JSON if it parses as JSON, else a string.
        #[arg(long = "claim", value_parser = mint::parse_claim)]
        claims: Vec<(String, String)>,
    },
    /// Print the JSON Schema (draft 2020-12) of the config file, for editors and validators.
    Schema,
    /// Run the gateway on the shipped demo config with built-in echo upstreams.
    Demo {
        #[arg(short = 'c', long = "config", default_value = "conf/demo.yaml")]
        config: PathBuf,
    },
}

fn init_logging() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,portcullis=info"),
    )
    .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match portcullis::load_policy(&config) {
            Ok(p) => {
                for w in &p.warnings {
                    eprintln!("warning: {w}");
                }
                print!("{}", p.summary());
                println!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!(
                    "{}: configuration is invalid ({} error{})",
                    config.display(),
                    e.errors.len(),
                    if e.errors.len() == 1 { "" } else { "s" }
                );
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            init_logging();
            let policy = match portcullis::load_policy(&config) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("{}: refusing to start", config.display());
                    return ExitCode::FAILURE;
                }
            };
            serve(policy, &config)
        }
        Command::Reload { config } => reload(&config),
        Command::Schema => {
            let text = serde_json::to_string_pretty(&portcullis::config::schema::schema())
                .expect("a JSON value serialises");
            println!("{text}");
            ExitCode::SUCCESS
        }
        Command::Explain {
            config,
            method,
            host,
            client_ip,
            token,
            headers,
            offline,
            path,
        } => {
            let policy = match portcullis::load_policy(&config) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let ask = portcullis::explain::Ask {
                method,
                host,
                target: path,
                token,
                headers,
                client_ip,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start a runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async {
                if !offline {
                    for line in portcullis::explain::fetch_remote_keys(&policy).await {
                        println!("{line}");
                    }
                }
                match portcullis::explain::explain(&policy, &ask).await {
                    Ok(e) => {
                        print!("{}", e.text);
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Revoke {
            config,
            sub,
            jti,
            until,
            ttl,
            list,
        } => {
            use portcullis::cluster::revocation::{command, Action};
            let action = match (sub, jti, list) {
                (_, _, true) => Ok(Action::List),
                (Some(s), None, false) => Ok(Action::Revoke(format!("sub:{s}"))),
                (None, Some(j), false) => Ok(Action::Revoke(format!("jti:{j}"))),
                _ => Err("give --sub S, --jti J or --list".to_string()),
            };
            let policy = match portcullis::load_policy(&config) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            match action.and_then(|a| command(&policy, a, until.as_deref(), ttl.as_deref())) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("revoke: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token {
            key,
            secret,
            base64,
            alg,
            kid,
            sub,
            iss,
            aud,
            ttl,
            claims,
        } => {
            let signing = match (&key, &secret) {
                (Some(path), None) => mint::key_file(path, kid.as_deref()),
                (None, Some(s)) => mint::secret_key(s, base64),
                _ => Err("give --key FILE or --secret S".to_string()),
            };
            let ttl = match portcullis::config::parse_duration(&ttl) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("--ttl: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = MintOptions {
                alg,
                kid,
                sub,
                iss,
                aud,
                ttl: Some(ttl),
                claims,
            };
            match signing.and_then(|k| mint::mint(&k, &opts, now_secs())) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis token: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { config } => {
            init_logging();
            demo(&config)
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn reload(config: &std::path::Path) -> ExitCode {
    let policy = match portcullis::load_policy(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: not reloading", config.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(pid_file) = policy.server.pid_file else {
        eprintln!(
            "{}: server.pid_file is not set, so the running process cannot be found; send it SIGHUP yourself",
            config.display()
        );
        return ExitCode::FAILURE;
    };
    let pid: i32 = match portcullis::config::file::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(p) if p > 0 => p,
        _ => {
            eprintln!("cannot read a pid from {}", pid_file.display());
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: kill(2) with a positive pid and a valid signal number has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        eprintln!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    println!("reload signal sent to pid {pid}");
    ExitCode::SUCCESS
}

fn serve(policy: portcullis::policy::Policy, config: &std::path::Path) -> ExitCode {
    for w in &policy.warnings {
        log::warn!("{w}");
    }
    let listen: Vec<String> = policy.server.listen.iter().map(|l| l.to_string()).collect();
    log::info!(
        "portcullis {} listening on {} ({} routes)",
        env!("CARGO_PKG_VERSION"),
        listen.join(", "),
        policy.routes.routes().len()
    );
    match portcullis::server::build(policy, config) {
        Ok(built) => portcullis::server::run(built),
        Err(e) => {
            eprintln!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(config: &std::path::Path) -> ExitCode {
    let policy = match portcullis::load_policy(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Echo servers on every loopback peer, kept alive for the life of the process.
    let mut echoes = Vec::new();
    for pool in policy.upstreams.values() {
        for (addr, _) in pool.peers() {
            if !addr.ip().is_loopback() {
                continue;
            }
            match portcullis::echo::EchoServer::start(&addr.to_string()) {
                Ok(e) => echoes.push(e),
                Err(e) => {
                    eprintln!("demo: cannot start the echo upstream on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    std::mem::forget(echoes);

    let gw = policy
        .server
        .first_plain()
        .unwrap_or(policy.server.listen[0].addr);
    let base = if gw.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", gw.port())
    } else {
        format!("http://{gw}")
    };
    let protected = policy.routes.routes().iter().find(|r| !r.auth.is_empty());
    println!("portcullis demo: gateway on {base}, echo upstreams on the configured peers");
    println!();
    if let Some(route) = protected {
        let v = &route.auth[0];
        let path = format!("{}demo", route.prefix);
        match v
            .keys
            .iter()
            .find_map(|k| k.secret().map(|s| (s, k.kid.clone())))
        {
            Some((secret, kid)) => {
                let key = mint::SigningKey {
                    key: jsonwebtoken::EncodingKey::from_secret(secret),
                    default_alg: portcullis::auth::Alg::HS256,
                    kid,
                };
                let opts = MintOptions {
                    sub: Some("demo-user".into()),
                    iss: v.issuers.first().cloned(),
                    aud: v.audiences.first().cloned().into_iter().collect(),
                    ttl: Some(std::time::Duration::from_secs(3600)),
                    ..Default::default()
                };
                match mint::mint(&key, &opts, now_secs()) {
                    Ok(token) => {
                        println!("# no token: 401 with WWW-Authenticate");
                        println!("curl -i {base}{path}");
                        println!(
                            "# with a token (valid for 1h): 200, and the upstream sees the claims"
                        );
                        println!("curl -i -H 'Authorization: Bearer {token}' {base}{path}");
                    }
                    Err(e) => println!("(could not mint a demo token: {e})"),
                }
            }
            None => println!(
                "# {path} needs a token signed by policy {:?}; mint one with `portcullis token`",
                v.name
            ),
        }
    }
    println!("# a public route: 200 without a token");
    println!("curl -i {base}/");
    let tls = policy.server.listen.iter().find_map(|l| match &l.kind {
        portcullis::server::ListenKind::Tls(p) => Some((l.addr, p.clone())),
        _ => None,
    });
    if let Some((addr, profile)) = tls {
        if let Some(p) = policy.tls.get(&profile) {
            let (c, _) = &p.pairs[0];
            println!("# the same over TLS and HTTP/2 (the demo certificate is self-signed)");
            println!(
                "curl -i --http2 --cacert {} https://localhost:{}/",
                c.display(),
                addr.port()
            );
        }
    }
    println!();
    serve(policy, config)
}
