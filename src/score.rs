//! `streamscore score`: the service's decode → score → encode path over JSON lines.
//!
//! Reads a file or stdin, writes one output line per scored input line to stdout, and
//! reports each line it cannot score on stderr with its line number. A bad line never
//! stops the run; the exit status says whether any line was rejected.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::model::LoadedModel;
use crate::record::{SourcePosition, DEFAULT_MAX_RECORD_BYTES};
use crate::transform::{transform_batch, Input, Outcome};

/// Lines scored per model call: the same batching the service does.
const LINES_PER_BATCH: usize = 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct ScoreArgs {
    /// Model file to score with.
    #[arg(long, default_value = "models/iris-forest.json")]
    pub model: PathBuf,
    /// JSON-lines input; stdin when absent or `-`.
    pub input: Option<PathBuf>,
    #[arg(long, default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScoreSummary {
    pub scored: usize,
    pub rejected: usize,
}

pub fn run(args: &ScoreArgs) -> anyhow::Result<ScoreSummary> {
    let model = LoadedModel::load(&args.model)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let input: Box<dyn Read> = match args.input.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p == Path::new("-") => Box::new(std::io::stdin().lock()),
        Some(p) => {
            Box::new(std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?)
        }
    };
    let stdout = std::io::stdout().lock();
    let stderr = std::io::stderr().lock();
    score_lines(
        &model,
        BufReader::new(input),
        BufWriter::new(stdout),
        stderr,
        args.max_record_bytes,
    )
}

/// Scores every line of `input`; `offset` in each output is the 0-based line index.
pub fn score_lines(
    model: &LoadedModel,
    mut input: impl BufRead,
    mut out: impl Write,
    mut errors: impl Write,
    max_record_bytes: usize,
) -> anyhow::Result<ScoreSummary> {
    let mut summary = ScoreSummary::default();
    let mut lines: Vec<Vec<u8>> = Vec::with_capacity(LINES_PER_BATCH);
    let mut first_line = 0usize;
    let mut eof = false;
    while !eof {
        lines.clear();
        while lines.len() < LINES_PER_BATCH {
            let mut line = Vec::new();
            if input
                .read_until(b'\n', &mut line)
                .context("reading input")?
                == 0
            {
                eof = true;
                break;
            }
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            lines.push(line);
        }
        let inputs: Vec<Input<'_>> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| Input {
                payload: Some(line.as_slice()),
                source: SourcePosition {
                    partition: 0,
                    offset: (first_line + i) as i64,
                },
            })
            .collect();
        for (i, outcome) in transform_batch(model, &inputs, max_record_bytes)
            .into_iter()
            .enumerate()
        {
            match outcome {
                Outcome::Scored(json) => {
                    out.write_all(&json)?;
                    out.write_all(b"\n")?;
                    summary.scored += 1;
                }
                Outcome::Rejected(rejection) => {
                    writeln!(errors, "line {}: {rejection}", first_line + i + 1)?;
                    summary.rejected += 1;
                }
            }
        }
        first_line += lines.len();
    }
    out.flush()?;
    Ok(summary)
}
