//! What every load test reports, in one shape: a progress bar while it runs, a line per
//! statistics interval, an aligned summary table at the end, a JSON file, a plot, and a
//! verdict against pass criteria.
//!
//! The pieces do not know which test uses them:
//! - [`Progress`]: an `indicatif` bar on stderr, hidden when stderr is not a terminal or
//!   the run is quiet; [`Progress::println`] prints a line (an interval line) above it;
//! - [`Latency`]: p50/p99/max/mean in milliseconds from an `hdrhistogram` of microseconds;
//! - [`Table`]: plain text, columns aligned, numbers right-aligned;
//! - [`Criterion`] / [`Verdict`]: "measured ≤ limit" checks, each naming the option that
//!   sets its limit, so a failed run says which criterion failed and how to change it;
//! - [`Plot`]: named time series, one chart per metric (stacked, shared time axis), and
//!   under them a grid of small panels (one per channel, say), written as SVG or PNG by
//!   `plotters` ([`Plot::write`]);
//! - [`write_json`]: any `Serialize` report, pretty-printed.
//!
//! Plot text needs a TrueType font, read at run time (no fontconfig, no system library at
//! build time): `CASTMUX_PLOT_FONT` if set, else DejaVu Sans or Liberation Sans from the
//! usual places (Debian: `fonts-dejavu-core`).

use std::borrow::Cow;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Why a report file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The report could not be serialised.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The plot's file name ends neither in `.svg` nor in `.png`.
    #[error("{0}: a plot is written as .svg or .png")]
    PlotFormat(PathBuf),
    /// No TrueType font for the plot's text.
    #[error(
        "no TrueType font for the plot's text ({0}); install fonts-dejavu-core or set \
         CASTMUX_PLOT_FONT=/path/to/font.ttf"
    )]
    NoFont(String),
    /// The plot has nothing to draw.
    #[error("{0}: nothing to plot (no statistics interval completed)")]
    EmptyPlot(PathBuf),
    /// plotters failed.
    #[error("{path}: cannot draw the plot: {reason}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// What plotters said.
        reason: String,
    },
}

/// The live view of a run: a bar of elapsed time against the run's length (a spinner when
/// the length is open), with a message of live counters. Hidden when `quiet` or when
/// stderr is not a terminal; [`Progress::println`] works either way.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for a run of `length` (None: until stopped).
    pub fn new(length: Option<Duration>, quiet: bool) -> Progress {
        let visible = !quiet && std::io::stderr().is_terminal();
        let bar = match length {
            Some(d) => {
                let bar = ProgressBar::with_draw_target(
                    Some(d.as_secs().max(1)),
                    ProgressDrawTarget::hidden(),
                );
                bar.set_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{wide_bar}] {pos}/{len} s  {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar
            }
            None => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed_precise}  {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar
            }
        };
        if visible {
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        }
        Progress { bar }
    }

    /// Whether the bar is drawn.
    pub fn is_visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Move the bar to `elapsed` and show `message` beside it.
    pub fn update(&self, elapsed: Duration, message: impl Into<Cow<'static, str>>) {
        self.bar.set_position(elapsed.as_secs());
        self.bar.set_message(message);
    }

    /// Run `print` with the bar cleared, so what it prints (to stdout or stderr) stays
    /// above the bar.
    pub fn println<R>(&self, print: impl FnOnce() -> R) -> R {
        self.bar.suspend(print)
    }

    /// Remove the bar (before the summary is printed).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Response times of a window, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// From a histogram of microseconds (all zero when it is empty).
    pub fn from_micros(h: &hdrhistogram::Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits: what
/// [`Latency::from_micros`] reads. Values above the range are clamped to it.
pub fn micros_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
        .expect("static histogram bounds are valid")
}

/// Record `d` in a histogram from [`micros_histogram`] (clamped to its range).
pub fn record_micros(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, h.high()));
}

/// A plain-text table: a header row, a rule, rows; every column as wide as its widest cell.
/// A column (but the first) whose cells all read as numbers (`12`, `3.5`, `1.2 ms`, `-`) is
/// right-aligned, header included; others are left-aligned.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Append a row (short rows are padded with empty cells).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Table {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// Number of rows (without the header).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

fn numeric(cell: &str) -> bool {
    let head = cell.split_whitespace().next().unwrap_or("");
    head == "-" || (!head.is_empty() && head.parse::<f64>().is_ok())
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let cell = |row: &[String], i: usize| row.get(i).cloned().unwrap_or_default();
        let width: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .chain([&self.header])
                    .map(|r| cell(r, i).chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let right: Vec<bool> = (0..cols)
            .map(|i| {
                i > 0
                    && self.rows.iter().any(|r| !cell(r, i).is_empty())
                    && self
                        .rows
                        .iter()
                        .map(|r| cell(r, i))
                        .all(|c| c.is_empty() || numeric(&c))
            })
            .collect();
        let line = |f: &mut fmt::Formatter<'_>, row: &[String]| {
            let mut text = String::new();
            for (i, w) in width.iter().enumerate() {
                let c = cell(row, i);
                if i > 0 {
                    text.push_str("  ");
                }
                if right[i] {
                    text.push_str(&format!("{c:>w$}"));
                } else {
                    text.push_str(&format!("{c:<w$}"));
                }
            }
            writeln!(f, "{}", text.trim_end())
        };
        line(f, &self.header)?;
        let rule: usize = width.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
        writeln!(f, "{}", "-".repeat(rule))?;
        for r in &self.rows {
            line(f, r)?;
        }
        Ok(())
    }
}

/// Which side of its limit a measure must stay on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// `measured <= limit`.
    AtMost,
    /// `measured >= limit`.
    AtLeast,
}

/// One pass criterion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Criterion {
    /// What is measured, e.g. "response time p99".
    pub what: String,
    /// The option that sets the limit, e.g. "--max-p99-ms" ("" for a fixed rule).
    pub option: String,
    /// Which side of the limit passes.
    pub bound: Bound,
    /// The limit.
    pub limit: f64,
    /// What the run measured.
    pub measured: f64,
    /// Unit of both numbers ("ms", "", "%").
    pub unit: String,
    /// Whether the run passed it (NaN, nothing measured, passes nothing).
    pub passed: bool,
}

impl Criterion {
    /// `what` must stay at or below `limit` (set by `option`); the run measured `measured`.
    pub fn at_most(
        what: impl Into<String>,
        option: impl Into<String>,
        limit: f64,
        measured: f64,
        unit: impl Into<String>,
    ) -> Criterion {
        Criterion {
            what: what.into(),
            option: option.into(),
            bound: Bound::AtMost,
            limit,
            measured,
            unit: unit.into(),
            passed: measured <= limit,
        }
    }

    /// `what` must reach at least `limit`.
    pub fn at_least(
        what: impl Into<String>,
        option: impl Into<String>,
        limit: f64,
        measured: f64,
        unit: impl Into<String>,
    ) -> Criterion {
        Criterion {
            bound: Bound::AtLeast,
            passed: measured >= limit,
            ..Criterion::at_most(what, option, limit, measured, unit)
        }
    }
}

fn number(v: f64, unit: &str) -> String {
    let n = if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    };
    if unit.is_empty() {
        n
    } else {
        format!("{n} {unit}")
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match (self.bound, self.passed) {
            (Bound::AtMost, true) => "<=",
            (Bound::AtMost, false) => ">",
            (Bound::AtLeast, true) => ">=",
            (Bound::AtLeast, false) => "<",
        };
        write!(
            f,
            "{} {} {op} {}",
            self.what,
            number(self.measured, &self.unit),
            number(self.limit, &self.unit),
        )?;
        if !self.option.is_empty() {
            write!(f, " ({})", self.option)?;
        }
        Ok(())
    }
}

/// Every criterion of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    /// Whether every criterion passed.
    pub passed: bool,
    /// The criteria, in the order they were checked.
    pub criteria: Vec<Criterion>,
}

impl Verdict {
    /// The verdict of `criteria`.
    pub fn new(criteria: Vec<Criterion>) -> Verdict {
        Verdict {
            passed: criteria.iter().all(|c| c.passed),
            criteria,
        }
    }

    /// The criteria that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Criterion> {
        self.criteria.iter().filter(|c| !c.passed)
    }

    /// The failed criteria on one line ("" when it passed): the reason a run exits non-zero.
    pub fn reason(&self) -> String {
        self.failures()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A table of every criterion with PASS / FAIL.
    pub fn table(&self) -> Table {
        let mut t = Table::new(["criterion", "measured", "limit", "option", "result"]);
        for c in &self.criteria {
            let side = match c.bound {
                Bound::AtMost => "<=",
                Bound::AtLeast => ">=",
            };
            t.row([
                c.what.clone(),
                number(c.measured, &c.unit),
                format!("{side} {}", number(c.limit, &c.unit)),
                c.option.clone(),
                if c.passed { "PASS" } else { "FAIL" }.to_owned(),
            ]);
        }
        t
    }
}

/// One named series of a chart: (seconds since the start, value) points.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Series {
    /// Its name in the legend ("p99", "channel 3").
    pub name: String,
    /// The points, in time order.
    pub points: Vec<(f64, f64)>,
}

/// One chart: a metric, its unit, its series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Chart {
    /// The metric ("response time", "ECM interval").
    pub metric: String,
    /// The unit of the y axis ("ms", "per interval", "%").
    pub unit: String,
    /// The series drawn on it.
    pub series: Vec<Series>,
}

/// Named time series, one chart per metric, stacked over a shared time axis; and, under
/// them, small multiples: a grid of panels of the same shape (one per channel), each with
/// its own series, on the same time axis, with a title of their own.
///
/// ```
/// use castmux::loadtest::report::Plot;
/// let mut plot = Plot::new("loadtest headend: 3 channels");
/// for t in [10.0, 20.0, 30.0] {
///     plot.push("ECM interval max", "ms", "channel 1", t, 101.0);
///     plot.push("ECM interval max", "ms", "channel 2", t, 99.5);
///     plot.push("CPU", "%", "castmux", t, 35.0);
/// }
/// assert_eq!(plot.charts().len(), 2);
/// plot.set_panels_title("per channel");
/// plot.push_panel("channel 1", "ms", "latency p99", 10.0, 4.2);
/// assert_eq!(plot.panels().len(), 1);
/// // plot.write(Path::new("run.svg"))?;  // or run.png
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plot {
    /// The title above every chart.
    pub title: String,
    charts: Vec<Chart>,
    /// The title above the grid of panels.
    panels_title: String,
    panels: Vec<Chart>,
}

/// Series of a chart that get a legend; more are drawn without one.
const LEGEND_MAX: usize = 12;
/// Pixels per chart, and the width.
const CHART_HEIGHT: u32 = 320;
const WIDTH: u32 = 1200;
/// Panels side by side, and the pixels of a row of them.
const PANEL_COLUMNS: usize = 3;
const PANEL_HEIGHT: u32 = 240;
/// Pixels of a title line (the plot's, the grid's).
const TITLE_HEIGHT: u32 = 40;

/// Add (t, value) to series `series` of the chart named `metric` in `charts` (made with
/// `unit` the first time); charts and series keep the order they were first named in.
fn push_to(charts: &mut Vec<Chart>, metric: &str, unit: &str, series: &str, t: f64, value: f64) {
    let chart = match charts.iter().position(|c| c.metric == metric) {
        Some(i) => &mut charts[i],
        None => {
            charts.push(Chart {
                metric: metric.to_owned(),
                unit: unit.to_owned(),
                series: Vec::new(),
            });
            charts.last_mut().expect("just pushed")
        }
    };
    let s = match chart.series.iter().position(|s| s.name == series) {
        Some(i) => &mut chart.series[i],
        None => {
            chart.series.push(Series {
                name: series.to_owned(),
                points: Vec::new(),
            });
            chart.series.last_mut().expect("just pushed")
        }
    };
    s.points.push((t, value));
}

/// Text sizes of a chart (caption, labels), and the room above its highest value (a
/// small panel's legend sits there instead of over the lines).
#[derive(Clone, Copy)]
struct Sizes {
    caption: u32,
    labels: u32,
    headroom: f64,
}

impl Plot {
    /// An empty plot.
    pub fn new(title: impl Into<String>) -> Plot {
        Plot {
            title: title.into(),
            ..Plot::default()
        }
    }

    /// Add the point (`t` seconds, `value`) to series `series` of chart `metric` (made
    /// with `unit` the first time it is named). Charts and series keep the order they
    /// were first named in.
    pub fn push(&mut self, metric: &str, unit: &str, series: &str, t: f64, value: f64) {
        push_to(&mut self.charts, metric, unit, series, t, value);
    }

    /// Add the point to series `series` of the small panel `panel` (the grid under the
    /// charts; panels keep the order they were first named in, row by row).
    pub fn push_panel(&mut self, panel: &str, unit: &str, series: &str, t: f64, value: f64) {
        push_to(&mut self.panels, panel, unit, series, t, value);
    }

    /// The title above the grid of panels (what they are, which were chosen).
    pub fn set_panels_title(&mut self, title: impl Into<String>) {
        self.panels_title = title.into();
    }

    /// The charts so far.
    pub fn charts(&self) -> &[Chart] {
        &self.charts
    }

    /// The panels so far.
    pub fn panels(&self) -> &[Chart] {
        &self.panels
    }

    /// The title above the panels.
    pub fn panels_title(&self) -> &str {
        &self.panels_title
    }

    /// Whether there is no point at all.
    pub fn is_empty(&self) -> bool {
        self.charts
            .iter()
            .chain(&self.panels)
            .all(|c| c.series.iter().all(|s| s.points.is_empty()))
    }

    fn panel_rows(&self) -> usize {
        self.panels.len().div_ceil(PANEL_COLUMNS)
    }

    /// The image's height: the title, the charts, the grid's title and rows.
    fn height(&self) -> u32 {
        let grid = if self.panels.is_empty() {
            0
        } else {
            TITLE_HEIGHT + PANEL_HEIGHT * self.panel_rows() as u32
        };
        TITLE_HEIGHT + CHART_HEIGHT * self.charts.len() as u32 + grid
    }

    /// Write the plot to `path`: SVG when it ends in `.svg`, PNG when in `.png`.
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !matches!(ext.as_deref(), Some("svg" | "png")) {
            return Err(ReportError::PlotFormat(path.to_owned()));
        }
        if self.is_empty() {
            return Err(ReportError::EmptyPlot(path.to_owned()));
        }
        font()?;
        let height = self.height();
        let plot_err = |reason: String| ReportError::Plot {
            path: path.to_owned(),
            reason,
        };
        // plotters writes the file when the area is dropped or presented; a failure to
        // create it shows up here
        if ext.as_deref() == Some("svg") {
            use plotters::prelude::*;
            let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
            self.draw(root).map_err(plot_err)?;
        } else {
            use plotters::prelude::*;
            let root = BitMapBackend::new(path, (WIDTH, height)).into_drawing_area();
            self.draw(root).map_err(plot_err)?;
        }
        // a backend that failed to write says so only in its drop: check the file
        match std::fs::metadata(path) {
            Ok(m) if m.len() > 0 => Ok(()),
            Ok(_) => Err(plot_err("the file is empty".to_owned())),
            Err(source) => Err(ReportError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn draw<DB: plotters::prelude::DrawingBackend>(
        &self,
        root: plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), String> {
        use plotters::prelude::*;
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let root = root
            .titled(&self.title, (FONT, 22).into_font())
            .map_err(e)?;
        // one time axis for every chart and panel
        let (t0, t1) = self
            .charts
            .iter()
            .chain(&self.panels)
            .flat_map(|c| c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
                (lo.min(t), hi.max(t))
            });
        let time = if t1 > t0 {
            (t0.min(0.0), t1)
        } else {
            (0.0, t0.max(1.0))
        };
        let (top, grid) = root.split_vertically(CHART_HEIGHT as i32 * self.charts.len() as i32);
        if !self.charts.is_empty() {
            let big = Sizes {
                caption: 16,
                labels: 12,
                headroom: 1.1,
            };
            for (area, chart) in top
                .split_evenly((self.charts.len(), 1))
                .iter()
                .zip(&self.charts)
            {
                draw_chart(area, chart, time, big)?;
            }
        }
        if !self.panels.is_empty() {
            let grid = grid
                .titled(&self.panels_title, (FONT, 18).into_font())
                .map_err(e)?;
            let small = Sizes {
                caption: 13,
                labels: 10,
                headroom: 1.6,
            };
            let cells = grid.split_evenly((self.panel_rows(), PANEL_COLUMNS));
            for (area, panel) in cells.iter().zip(&self.panels) {
                draw_chart(area, panel, time, small)?;
            }
        }
        root.present().map_err(e)?;
        Ok(())
    }
}

/// One chart (or panel) on `area`: caption, mesh, a line per series, a legend when there
/// are few enough.
fn draw_chart<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
    chart: &Chart,
    (t0, t1): (f64, f64),
    sizes: Sizes,
) -> Result<(), String> {
    use plotters::prelude::*;
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    let vmax = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let vmax = if vmax > 0.0 {
        vmax * sizes.headroom
    } else {
        1.0
    };
    let mut c = ChartBuilder::on(area)
        .caption(
            format!("{} ({})", chart.metric, chart.unit),
            (FONT, sizes.caption).into_font(),
        )
        .margin(10)
        .x_label_area_size(sizes.labels * 5 / 2)
        .y_label_area_size(sizes.labels * 5)
        .build_cartesian_2d(t0..t1, 0.0..vmax)
        .map_err(e)?;
    c.configure_mesh()
        .x_desc("seconds since the start")
        .y_desc(chart.unit.as_str())
        .label_style((FONT, sizes.labels).into_font())
        .draw()
        .map_err(e)?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let drawn = c
            .draw_series(LineSeries::new(
                s.points.iter().copied().filter(|p| p.1.is_finite()),
                color.stroke_width(2),
            ))
            .map_err(e)?;
        if chart.series.len() <= LEGEND_MAX {
            drawn.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    if chart.series.len() <= LEGEND_MAX {
        c.configure_series_labels()
            .label_font((FONT, sizes.labels).into_font())
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
    }
    Ok(())
}

/// The font family plots are drawn with (registered by [`font`]).
const FONT: &str = "sans-serif";

/// Fonts looked for, in order, when `CASTMUX_PLOT_FONT` is not set.
const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// Find and register the plot font, once per process.
fn font() -> Result<(), ReportError> {
    static FOUND: OnceLock<Result<(), String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let candidates: Vec<PathBuf> = match std::env::var_os("CASTMUX_PLOT_FONT") {
                Some(p) => vec![PathBuf::from(p)],
                None => FONT_PATHS.iter().map(PathBuf::from).collect(),
            };
            for p in &candidates {
                let Ok(bytes) = std::fs::read(p) else {
                    continue;
                };
                // plotters keeps fonts for the life of the process; this happens once
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, plotters::style::FontStyle::Normal, bytes)
                    .is_ok()
                {
                    return Ok(());
                }
            }
            Err(format!(
                "looked for {}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
        .clone()
        .map_err(ReportError::NoFont)
}

/// A report with its verdict, as the JSON file holds it: the report's fields, then
/// `"verdict"`.
#[derive(Debug, Serialize)]
pub struct Outcome<'a, T: Serialize> {
    /// The test's own report.
    #[serde(flatten)]
    pub report: &'a T,
    /// The verdict against the run's criteria.
    pub verdict: &'a Verdict,
}

/// Write `report` to `path` as pretty-printed JSON.
pub fn write_json(path: &Path, report: &impl Serialize) -> Result<(), ReportError> {
    let mut text = serde_json::to_string_pretty(report).map_err(|source| ReportError::Json {
        path: path.to_owned(),
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A number of milliseconds as a table cell: `0.84 ms`, `12.3 ms`, `1520 ms`.
pub fn ms_cell(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["metric", "total", "note"]);
        t.row(["requests", "1000", "all"]);
        t.row(["response p99", "1.25 ms", ""]);
        let s = t.to_string();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "metric          total  note");
        assert_eq!(lines[1], "-".repeat(27));
        assert_eq!(lines[2], "requests         1000  all");
        assert_eq!(lines[3], "response p99  1.25 ms");
    }

    #[test]
    fn criteria_name_what_failed() {
        let v = Verdict::new(vec![
            Criterion::at_most("response time p99", "--max-p99-ms", 10.0, 2.5, "ms"),
            Criterion::at_most("late answers", "--max-late", 0.0, 3.0, ""),
            Criterion::at_most("nothing measured", "--x", 1.0, f64::NAN, ""),
            Criterion::at_least("ECMs received", "", 1.0, 0.0, ""),
        ]);
        assert!(!v.passed);
        assert_eq!(
            v.reason(),
            "late answers 3 > 0 (--max-late); nothing measured NaN > 1 (--x); \
             ECMs received 0 < 1"
        );
        assert!(v.table().to_string().contains("PASS"));
        assert!(Verdict::new(vec![]).passed);
    }

    #[test]
    fn latency_from_histogram() {
        let mut h = micros_histogram();
        assert_eq!(Latency::from_micros(&h), Latency::default());
        for us in 1..=100u64 {
            record_micros(&mut h, Duration::from_micros(us * 1000));
        }
        record_micros(&mut h, Duration::from_secs(100_000));
        let l = Latency::from_micros(&h);
        assert_eq!(l.count, 101);
        assert!((l.p50_ms - 51.0).abs() < 0.1, "{l:?}");
        assert!(l.max_ms >= 599_000.0, "clamped to the range: {l:?}");
    }

    #[test]
    fn plot_groups_series_by_metric() {
        let mut p = Plot::new("t");
        assert!(p.is_empty());
        p.push("response time", "ms", "p50", 1.0, 1.0);
        p.push("response time", "ms", "p99", 1.0, 2.0);
        p.push("requests", "per interval", "requests", 1.0, 10.0);
        p.push("response time", "ms", "p50", 2.0, 1.5);
        assert_eq!(p.charts().len(), 2);
        assert_eq!(p.charts()[0].series[0].points, [(1.0, 1.0), (2.0, 1.5)]);
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("x.gif");
        assert!(matches!(p.write(&bad), Err(ReportError::PlotFormat(_))));
    }

    #[test]
    fn panels_make_a_grid_under_the_charts_in_svg_and_png() {
        let mut p = Plot::new("t");
        let height_without = {
            p.push("CPU", "cores", "castmux", 1.0, 0.5);
            p.height()
        };
        p.set_panels_title("per channel: all 4");
        for ch in 0..4 {
            for t in [1.0, 2.0, 3.0] {
                let name = format!("channel {ch}");
                p.push_panel(&name, "ms", "ECM interval max", t, 100.0 + ch as f64);
                p.push_panel(&name, "ms", "latency p99", t, 2.0);
            }
        }
        assert_eq!(p.charts().len(), 1, "panels are not charts");
        assert_eq!(p.panels().len(), 4);
        assert_eq!(p.panels()[3].series[1].points.len(), 3);
        // 4 panels, 3 a row: 2 rows and the grid's title
        assert_eq!(p.height(), height_without + TITLE_HEIGHT + 2 * PANEL_HEIGHT);
        if font().is_err() {
            eprintln!("no font: the drawing is not tried");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("p.svg");
        p.write(&svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for want in ["per channel: all 4", "channel 3 (ms)", "CPU (cores)"] {
            assert!(text.contains(want), "{want}");
        }
        let png = dir.path().join("p.png");
        p.write(&png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // panels alone are a plot too
        let mut only = Plot::new("only panels");
        only.push_panel("channel 0", "ms", "latency p99", 1.0, 1.0);
        only.write(&dir.path().join("o.png")).unwrap();
    }
}
