//! `castmux softcard ...`: the software card in use. `serve` puts a card.json behind a
//! newcamd server; `play` (live descrambling) is added beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tracing::info;

use castmux::io::{Input, InputOptions, InputUrl, Output, OutputOptions, OutputUrl};
use castmux::net::AcceptLimits;
use castmux::scramble::{run_stage, PacketStage, RunOptions};
use castmux::softcard::newcamd::{
    DesKey14, NewcamdServer, ServerConfig, SoftCardBackend, StatsSnapshot, Users,
};
use castmux::softcard::player::{CardPlayer, CwSource, LocalCard};
use castmux::softcard::remote::{NewcamdLogin, NewcamdSource};
use castmux::softcard::{CwReduction, SoftCard};

use super::args;

/// `castmux softcard`.
#[derive(Debug, Args)]
pub struct SoftcardArgs {
    #[command(subcommand)]
    command: SoftcardCommand,
}

#[derive(Debug, Subcommand)]
enum SoftcardCommand {
    /// Serve a software card (card.json) over newcamd to OSCam, tvheadend or
    /// `softcard play --newcamd`.
    Serve(ServeArgs),
    /// Descramble a live stream for playback (VLC, ffplay) with a software card, or with
    /// a card on a newcamd server.
    Play(PlayArgs),
}

/// `castmux softcard play`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("cwsource").required(true).args(["card", "newcamd"])))]
pub struct PlayArgs {
    /// Input: udp://[SRC@]GROUP:PORT, srt://..., http://..., a file, or - for stdin.
    #[arg(short, long)]
    input: String,
    /// Output: udp://127.0.0.1:5000 (then `vlc udp://@:5000`), a file, or - for stdout
    /// (`| vlc -`, `| ffplay -`).
    #[arg(short, long)]
    output: String,
    /// The software card (card.json); EMMs addressed to it update it and it is saved back.
    #[arg(long, value_name = "FILE")]
    card: Option<PathBuf>,
    /// Take CWs from a newcamd server instead (castmux softcard serve, OSCam, ...); needs
    /// --user, a password and the DES key.
    #[arg(long, value_name = "HOST:PORT", requires = "user")]
    newcamd: Option<String>,
    /// newcamd user.
    #[arg(long)]
    user: Option<String>,
    /// newcamd password. On the command line it shows in `ps`: prefer --password-file or
    /// the environment variable.
    #[arg(
        long,
        env = "CASTMUX_NEWCAMD_PASSWORD",
        hide_env_values = true,
        value_parser = args::secret_text
    )]
    password: Option<args::SecretText>,
    /// A file holding the newcamd password (its first line; keep it mode 0600). Wins over
    /// --password and the variable.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// newcamd DES key, 28 hex digits. On the command line it shows in `ps`: prefer
    /// --des-key-file or the environment variable.
    #[arg(
        long,
        value_name = "HEX",
        env = "CASTMUX_NEWCAMD_DES_KEY",
        hide_env_values = true,
        value_parser = args::secret_text
    )]
    des_key: Option<args::SecretText>,
    /// A file holding the newcamd DES key, 28 hex digits (keep it mode 0600). Wins over
    /// --des-key and the variable.
    #[arg(long, value_name = "FILE")]
    des_key_file: Option<PathBuf>,
    /// Scrambling algorithm of the stream. Default csa2.
    #[arg(long, value_enum, default_value_t = super::scramble::Scrambling::Csa2)]
    scrambling: super::scramble::Scrambling,
    /// Stop when a live input has been silent this long (100ms to 7 days). Default: run
    /// until killed.
    #[arg(long, value_name = "DURATION", value_parser = args::stream_idle_timeout)]
    idle_timeout: Option<Duration>,
    /// Print the counters as JSON at the end (stderr when the output is stdout).
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    card_opts: CardPlayOptions,
}

/// What `softcard play` and `descramble --card` share besides input and output.
#[derive(Debug, Clone, Copy, Args)]
pub struct CardPlayOptions {
    /// Use 8-byte CWs from the card as full 64-bit keys. Default off: bytes 3 and 7 are
    /// replaced by their checksums, as CAMs do (see docs/cas-formats.md, "CW reduction");
    /// only for streams scrambled with full keys (castmux scramble --no-cw-checksum,
    /// TSDuck --no-entropy-reduction).
    #[arg(long)]
    full_cw: bool,
    /// Exit 0 even when scrambled packets were left scrambled (no key from the card for
    /// them). Default off: the exit status is 1 then, and the counters say how many.
    #[arg(long)]
    allow_scrambled: bool,
}

impl CardPlayOptions {
    fn reduction(&self) -> CwReduction {
        if self.full_cw {
            CwReduction::Full
        } else {
            CwReduction::Reduce
        }
    }
}

/// `castmux softcard serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The card to serve: a card.json exported with `castmux card export-key`. EMMs the
    /// card applies are saved back to it (see --read-only-card).
    #[arg(long)]
    card: PathBuf,
    /// Address and port to listen on (one card per port, as newcamd does).
    #[arg(long, default_value = "127.0.0.1:15050")]
    listen: SocketAddr,
    /// The newcamd DES key, 28 hex digits, shared with the clients. On the command line it
    /// shows in `ps`: prefer --des-key-file or the environment variable.
    #[arg(
        long,
        value_name = "HEX",
        env = "CASTMUX_NEWCAMD_DES_KEY",
        hide_env_values = true,
        value_parser = args::secret_text
    )]
    des_key: Option<args::SecretText>,
    /// A file holding the newcamd DES key, 28 hex digits (keep it mode 0600). Wins over
    /// --des-key and the variable.
    #[arg(long, value_name = "FILE")]
    des_key_file: Option<PathBuf>,
    /// A user allowed to log in, NAME:PASSWORD (AU: may send EMMs, sees the serial).
    /// Repeat for more users. On the command line passwords show in `ps`: prefer the
    /// users file (--config).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// A TOML users file: `[[user]] name = "..", password = "..", au = true|false`
    /// (keep it mode 0600).
    #[arg(long, value_name = "users.toml", visible_alias = "users-file")]
    config: Option<PathBuf>,
    /// Services (service ids) the card decrypts at once; a further one gets no CW until
    /// one has been idle for --service-idle. 1 to 64. Default 2.
    #[arg(long, value_name = "N", default_value = "2", value_parser = args::max_services)]
    max_services: usize,
    /// A service with no ECM for this long frees its slot. 100ms to 24h. Default 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::service_idle)]
    service_idle: Duration,
    /// Close a session that sent nothing for this long. 1s to 24h. Default 120s.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = args::session_idle_timeout)]
    idle_timeout: Duration,
    /// Delay before answering a failed login (slows password guessing). 0 to 60s.
    /// Default 1s.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = args::login_fail_delay)]
    login_fail_delay: Duration,
    /// Sessions open at most; further connections are closed at once. 1 to 65536.
    /// Default 256.
    #[arg(long, value_name = "N", default_value = "256", value_parser = args::max_clients)]
    max_clients: usize,
    /// Connections from one IP address at once, so one host cannot take every slot.
    /// Default: three quarters of --max-clients (192 of 256), the rest stays for others.
    #[arg(long, value_name = "N")]
    max_clients_per_address: Option<usize>,
    /// Close a connection that has not logged in this long after it connected (silent
    /// sockets give their slot back; counted as handshake_timeouts).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::duration)]
    login_timeout: Duration,
    /// How long a repeated ECM is answered from the cache. 0 (no cache) to 1h. Default 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = args::ecm_cache_ttl)]
    ecm_cache_ttl: Duration,
    /// Do not write EMM updates back to the card file (they last until exit).
    #[arg(long)]
    read_only_card: bool,
    /// Answer 8-byte CWs as the ECM carries them. Default off: bytes 3 and 7 are replaced
    /// by their checksums, as a CAM's card does (docs/cas-formats.md, "CW reduction").
    #[arg(long)]
    full_cw: bool,
}

/// Run `castmux softcard ...`.
pub fn run(a: SoftcardArgs) -> anyhow::Result<()> {
    match a.command {
        SoftcardCommand::Serve(s) => serve(s),
        SoftcardCommand::Play(p) => play(p),
    }
}

fn play(a: PlayArgs) -> anyhow::Result<()> {
    let (source, caid): (Box<dyn CwSource>, u16) = match (&a.card, &a.newcamd) {
        (Some(path), _) => local_card(path, a.card_opts)?,
        (None, Some(addr)) => {
            let password = secret(
                a.password.as_ref().map(args::SecretText::expose),
                a.password_file.as_deref(),
                "--newcamd needs the password: --password-file FILE, CASTMUX_NEWCAMD_PASSWORD or --password",
            )?;
            let des_key = des_key(
                a.des_key.as_ref().map(args::SecretText::expose),
                a.des_key_file.as_deref(),
            )?;
            let login = NewcamdLogin {
                addr: addr.clone(),
                user: a.user.clone().unwrap_or_default(),
                password,
                des_key,
                timeout: Duration::from_secs(5),
            };
            let src = NewcamdSource::connect(login)
                .with_context(|| format!("logging in to the newcamd server {addr}"))?;
            let caid = src.caid();
            info!(%addr, caid = format_args!("{caid:#06x}"), "newcamd card");
            (Box::new(src), caid)
        }
        (None, None) => unreachable!("clap requires --card or --newcamd"),
    };
    let stop = super::stop_flag()?;
    let opts = RunOptions {
        idle_timeout: a.idle_timeout,
        stop,
        ..RunOptions::default()
    };
    play_stream(
        source,
        caid,
        a.scrambling.algorithm(),
        &a.input,
        &a.output,
        &opts,
        a.stats,
        a.card_opts,
    )
}

/// The software card in `path` as a CW source (saved back after EMMs), and its CAID.
pub(crate) fn local_card(
    path: &std::path::Path,
    o: CardPlayOptions,
) -> anyhow::Result<(Box<dyn CwSource>, u16)> {
    let mut card = SoftCard::load(path).with_context(|| format!("--card {}", path.display()))?;
    card.set_cw_reduction(o.reduction());
    let caid = card.ca_system_id();
    info!(serial = %card.serial(), "software card loaded");
    Ok((
        Box::new(LocalCard::new(card, Some(path.to_path_buf()))),
        caid,
    ))
}

/// Descramble `input` to `output` with CWs from `source` (shared with `descramble --card`).
/// On a terminal, a status line is kept up to date on stderr. A file or pipe waits for
/// the card's answer to each ECM; packets left scrambled make it an error unless
/// `card_opts.allow_scrambled`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn play_stream(
    source: Box<dyn CwSource>,
    ca_system_id: u16,
    algorithm: csa::Algorithm,
    input: &str,
    output: &str,
    opts: &RunOptions,
    stats: bool,
    card_opts: CardPlayOptions,
) -> anyhow::Result<()> {
    let input_url: InputUrl = input.parse().context("--input")?;
    let output_url: OutputUrl = output.parse().context("--output")?;
    let mut player = CardPlayer::new(algorithm, ca_system_id, source)?;
    player.set_cw_reduction(card_opts.reduction());
    let mut inp = Input::open(&input_url, &InputOptions::default())
        .with_context(|| format!("opening input {}", input_url.display()))?;
    // a file or pipe is read faster than a remote card answers: wait for each answer
    player.wait_for_answers(!inp.is_live());
    let mut out = Output::open(&output_url, &OutputOptions::default())
        .with_context(|| format!("opening output {}", output_url.display()))?;
    let res = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let mut st = StatusLine::new(&mut player);
        let r = run_stage(&mut inp, &mut out, &mut st, opts);
        eprintln!();
        r
    } else {
        run_stage(&mut inp, &mut out, &mut player, opts)
    };
    // what the start-up hold still keeps (an input shorter than the card's first answer)
    let mut rest = Vec::new();
    player.finish(&mut rest);
    let res = res.map_err(anyhow::Error::from).and_then(|end| {
        out.write_batch(&rest)
            .with_context(|| format!("writing to {}", output_url.display()))?;
        Ok(end)
    });
    let close = out.close(Duration::from_secs(2));
    let c = player.counters();
    info!(
        packets = c.packets,
        descrambled = c.descrambled,
        no_key = c.no_key,
        ecms = c.ecms,
        emms = c.emms,
        refusals = c.refusals,
        replays_refused = c.replays_refused,
        last_refusal = c.last_refusal.as_deref().unwrap_or("-"),
        "done"
    );
    if stats {
        super::print_stats(c, matches!(output_url, OutputUrl::Stdout))?;
    }
    res?;
    close?;
    if c.no_key > 0 && !card_opts.allow_scrambled {
        let why = c
            .last_refusal
            .as_deref()
            .unwrap_or(if c.answer_timeouts > 0 {
                "the card did not answer in time"
            } else {
                "no ECM answered for their period"
            });
        anyhow::bail!(
            "{} of {} scrambled packets were left scrambled ({why}); --allow-scrambled accepts that",
            c.no_key,
            c.no_key + c.descrambled
        );
    }
    Ok(())
}

/// Wraps the player and redraws one status line on stderr at most once a second.
struct StatusLine<'a> {
    player: &'a mut CardPlayer,
    since: std::time::Instant,
    bytes: u64,
}

impl<'a> StatusLine<'a> {
    fn new(player: &'a mut CardPlayer) -> Self {
        StatusLine {
            player,
            since: std::time::Instant::now(),
            bytes: 0,
        }
    }

    fn draw(&mut self) {
        let dt = self.since.elapsed();
        if dt < Duration::from_secs(1) {
            return;
        }
        let mbps = self.bytes as f64 * 8.0 / dt.as_secs_f64() / 1e6;
        let c = self.player.counters();
        let parity = match self.player.parity() {
            Some(csa::Parity::Even) => "even",
            Some(csa::Parity::Odd) => "odd",
            None => "-",
        };
        let service = c.service.map_or("-".to_owned(), |s| s.to_string());
        let refusal = c.last_refusal.as_deref().unwrap_or("none");
        eprint!(
            "\r\x1b[Kservice {service} | key {parity} | flips {} | ECMs {} | refusals {} ({refusal}) | {mbps:.1} Mbit/s",
            c.parity_flips, c.ecms, c.refusals
        );
        self.since = std::time::Instant::now();
        self.bytes = 0;
    }
}

impl PacketStage for StatusLine<'_> {
    fn process_batch(
        &mut self,
        batch: &mut castmux::io::PacketBatch,
        out: &mut Vec<u8>,
    ) -> Result<(), castmux::scramble::ScrambleError> {
        self.bytes += batch.as_bytes().len() as u64;
        self.player.process_batch(batch, out)?;
        self.draw();
        Ok(())
    }

    fn idle(&mut self) -> Result<(), castmux::scramble::ScrambleError> {
        self.player.idle()?;
        self.draw();
        Ok(())
    }
}

/// The largest secret file read: a password or a key is a line, not a document.
const MAX_SECRET_FILE: u64 = 4096;

/// A secret from the command line or the environment (`value`, clap fills it from the
/// variable) or from `file` (its first line, without the newline); `missing` when neither.
fn secret(
    value: Option<&str>,
    file: Option<&std::path::Path>,
    missing: &str,
) -> anyhow::Result<String> {
    let Some(path) = file else {
        return value
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("{missing}"));
    };
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_SECRET_FILE + 1), &mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > MAX_SECRET_FILE {
        anyhow::bail!(
            "{} is longer than {MAX_SECRET_FILE} bytes; it should hold one line",
            path.display()
        );
    }
    let line = text.lines().next().unwrap_or("").to_owned();
    text.clear();
    if line.is_empty() {
        anyhow::bail!("{} is empty; its first line is the secret", path.display());
    }
    Ok(line)
}

/// The newcamd DES key from --des-key / CASTMUX_NEWCAMD_DES_KEY or --des-key-file.
fn des_key(value: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<DesKey14> {
    let hex = secret(
        value,
        file,
        "the newcamd DES key is missing: --des-key-file FILE, CASTMUX_NEWCAMD_DES_KEY or --des-key",
    )?;
    let what = match file {
        Some(p) => format!("--des-key-file {}", p.display()),
        None => "--des-key".to_owned(),
    };
    DesKey14::from_hex(hex.trim()).context(what)
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let des_key = des_key(
        a.des_key.as_ref().map(args::SecretText::expose),
        a.des_key_file.as_deref(),
    )?;
    let mut users = Users::default();
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the users file {}", path.display()))?;
        users
            .add_toml(&text)
            .with_context(|| format!("users file {}", path.display()))?;
    }
    for u in &a.users {
        users.add_flag(u).context("--user")?;
    }
    if users.is_empty() {
        anyhow::bail!("no users: give --user NAME:PASSWORD or --config users.toml");
    }
    let mut card = SoftCardBackend::load(&a.card, !a.read_only_card)
        .with_context(|| format!("loading the card {}", a.card.display()))?;
    if a.full_cw {
        card.set_cw_reduction(CwReduction::Full);
    }
    let mut cfg = ServerConfig::new(des_key, users);
    cfg.max_services = a.max_services;
    cfg.service_idle = a.service_idle;
    cfg.idle_timeout = a.idle_timeout;
    cfg.login_fail_delay = a.login_fail_delay;
    cfg.accept = AcceptLimits::new(a.max_clients, a.max_clients_per_address, a.login_timeout)
        .context("--max-clients, --max-clients-per-address, --login-timeout")?;
    cfg.ecm_cache_ttl = a.ecm_cache_ttl;
    let n_users = cfg.users.len();
    let server = NewcamdServer::new(cfg, card);

    let stop = super::stop_flag()?;
    let rt = super::runtime(2)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let local = listener.local_addr()?;
        // the first line a script can wait for: where the server is listening
        info!(listen = %local, card = %a.card.display(), users = n_users, max_services = a.max_services, "newcamd: serving");
        server
            .run(listener, async {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
            .context("newcamd server")
    })?;
    report(&server.stats());
    Ok(())
}

fn report(s: &StatsSnapshot) {
    info!(
        accepted = s.accept.accepted,
        refused_full = s.accept.refused_full,
        refused_per_address = s.accept.refused_per_address,
        handshake_timeouts = s.accept.handshake_timeouts,
        accept_errors = s.accept.accept_errors,
        logins = s.logins,
        login_failures = s.login_failures,
        bad_frames = s.bad_frames,
        idle_timeouts = s.idle_timeouts,
        ecm_requests = s.ecm_requests,
        ecm_answered = s.ecm_answered,
        ecm_cache_hits = s.ecm_cache_hits,
        ecm_refused_card = s.ecm_refused_card,
        ecm_refused_service_limit = s.ecm_refused_service_limit,
        emm_accepted = s.emm_accepted,
        emm_rejected = s.emm_rejected,
        emm_not_allowed = s.emm_not_allowed,
        "newcamd: stopped"
    );
}
