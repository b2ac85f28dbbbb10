//! Labelled anomaly intervals of the telemanom data set
//! (`labeled_anomalies.csv`: `chan_id, spacecraft, anomaly_sequences, class,
//! num_values`, with `anomaly_sequences` a list of inclusive `[start, end]`
//! row indices). A channel listed twice gets the union of its intervals.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

/// Inclusive `(start, end)` row intervals per channel.
pub type Labels = HashMap<String, Vec<(u64, u64)>>;

/// One row of `labeled_anomalies.csv`; the columns gsinfer does not use
/// (`class`, `num_values`) are ignored.
#[derive(serde::Deserialize)]
struct Row {
    chan_id: String,
    spacecraft: Option<String>,
    anomaly_sequences: String,
}

/// Reads every row of `<data_dir>/labeled_anomalies.csv` with its 1-based
/// line number, as RFC 4180 CSV with a header.
fn rows(data_dir: &Path) -> Result<Vec<(u64, Row)>> {
    let path = data_dir.join("labeled_anomalies.csv");
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}:1: no header", path.display()))?
        .clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let bad = |e: csv::Error| {
            let line = e.position().map_or(0, csv::Position::line);
            anyhow::anyhow!("{}:{line}: {e}", path.display())
        };
        let record = record.map_err(bad)?;
        let line = record.position().map_or(0, csv::Position::line);
        let row: Row = record.deserialize(Some(&headers)).map_err(bad)?;
        if !row.chan_id.is_empty() {
            rows.push((line, row));
        }
    }
    Ok(rows)
}

/// The `spacecraft` column of `<data_dir>/labeled_anomalies.csv` per
/// channel (`SMAP`, `MSL`); empty when the file is missing or unreadable,
/// since it only groups the report.
pub fn read_spacecraft(data_dir: &Path) -> HashMap<String, String> {
    rows(data_dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, r)| Some((r.chan_id, r.spacecraft.filter(|c| !c.is_empty())?)))
        .collect()
}

/// Reads `<data_dir>/labeled_anomalies.csv`. A channel whose
/// `anomaly_sequences` is `[]` is listed with no interval: its data is
/// nominal, so every anomaly predicted on it is a false positive.
///
/// # Errors
/// When the file is missing, is not CSV with the columns `chan_id` and
/// `anomaly_sequences`, or an `anomaly_sequences` is not a JSON list of
/// `[start, end]` pairs.
pub fn read_labels(data_dir: &Path) -> Result<Labels> {
    let path = data_dir.join("labeled_anomalies.csv");
    let mut labels = Labels::new();
    for (line, row) in rows(data_dir)? {
        let seqs: Vec<(u64, u64)> =
            serde_json::from_str(&row.anomaly_sequences).with_context(|| {
                format!(
                    "{}:{line}: anomaly_sequences {:?} is not a list of [start, end] row indices",
                    path.display(),
                    row.anomaly_sequences
                )
            })?;
        let entry = labels.entry(row.chan_id).or_default();
        entry.extend(seqs);
        entry.sort_unstable();
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unions_repeated_channels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("labeled_anomalies.csv"),
            "chan_id,spacecraft,anomaly_sequences,class,num_values\n\
             P-2,SMAP,\"[[5350, 6575]]\",[point],8209\n\
             A-1,SMAP,\"[[4690, 4774]]\",[point],8640\n\
             P-2,SMAP,\"[[10, 20], [30, 40]]\",\"[a, b]\",8209\n",
        )
        .unwrap();
        let l = read_labels(dir.path()).unwrap();
        assert_eq!(l["A-1"], vec![(4690, 4774)]);
        assert_eq!(l["P-2"], vec![(10, 20), (30, 40), (5350, 6575)]);
        assert_eq!(read_spacecraft(dir.path())["A-1"], "SMAP");
    }

    #[test]
    fn a_channel_with_no_anomaly_is_listed_empty_and_a_bad_list_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("labeled_anomalies.csv");
        std::fs::write(
            &csv,
            "chan_id,spacecraft,anomaly_sequences,class,num_values\n\
             A-1,SMAP,[],[],2880\n\
             C-1,MSL,\"[[1, 2]]\",[point],2158\n",
        )
        .unwrap();
        let l = read_labels(dir.path()).unwrap();
        assert_eq!(l["A-1"], vec![]);
        assert_eq!(l["C-1"], vec![(1, 2)]);
        std::fs::write(
            &csv,
            "chan_id,spacecraft,anomaly_sequences,class,num_values\n\
             A-1,SMAP,\"[[1, 2]]\",[point],2880\n\
             C-1,MSL,\"[[1, x]]\",[point],2158\n",
        )
        .unwrap();
        let e = format!("{:#}", read_labels(dir.path()).unwrap_err());
        assert!(e.contains("labeled_anomalies.csv:3:"), "{e}");
        assert!(e.contains("not a list of [start, end]"), "{e}");
    }
}
