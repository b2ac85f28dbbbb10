//! Labelled anomaly intervals of the telemanom data set
//! (`labeled_anomalies.csv`: `chan_id, spacecraft, anomaly_sequences, class,
//! num_values`, with `anomaly_sequences` a list of inclusive `[start, end]`
//! row indices). A channel listed twice gets the union of its intervals.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

/// Inclusive `(start, end)` row intervals per channel.
pub type Labels = HashMap<String, Vec<(u64, u64)>>;

/// The `spacecraft` column of `<data_dir>/labeled_anomalies.csv` per
/// channel (`SMAP`, `MSL`); empty when the file is missing or unreadable,
/// since it only groups the report.
pub fn read_spacecraft(data_dir: &Path) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(data_dir.join("labeled_anomalies.csv")) else {
        return HashMap::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.splitn(3, ',');
            let chan = fields.next()?.trim();
            let craft = fields.next()?.trim();
            (!chan.is_empty() && !craft.is_empty()).then(|| (chan.to_string(), craft.to_string()))
        })
        .collect()
}

/// Reads `<data_dir>/labeled_anomalies.csv`.
///
/// # Errors
/// When the file is missing or a row cannot be parsed.
pub fn read_labels(data_dir: &Path) -> Result<Labels> {
    let path = data_dir.join("labeled_anomalies.csv");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut labels = Labels::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let (chan, rest) = line
            .split_once(',')
            .with_context(|| format!("{}:{}: no channel", path.display(), n + 1))?;
        let open = rest
            .find("\"[[")
            .with_context(|| format!("{}:{}: no anomaly_sequences", path.display(), n + 1))?;
        let close = rest[open..].find("]]\"").with_context(|| {
            format!(
                "{}:{}: unterminated anomaly_sequences",
                path.display(),
                n + 1
            )
        })?;
        let seqs: Vec<Vec<u64>> = serde_json::from_str(&rest[open + 1..open + close + 2])
            .with_context(|| {
                format!(
                    "{}:{}: anomaly_sequences is not a list of [start, end]",
                    path.display(),
                    n + 1
                )
            })?;
        let entry = labels.entry(chan.trim().to_string()).or_default();
        entry.extend(seqs.iter().filter(|s| s.len() == 2).map(|s| (s[0], s[1])));
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
}
