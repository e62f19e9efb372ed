//! The report pages: `index.html` (figures beside it, no external assets)
//! and `summary.md`, both from the same sections.

use super::{data::lambda_label, Input, ReportOptions, Section, SummaryRow};

/// How the report picks the λ it shows when `--lambda` is not given.
const LAMBDA_RULE: &str = "what <code>llep-trace tune</code> recommends on the simulated rows of each setup: the least total time, and among λ tied with it the middle one; where it recommends plain EP, the best LLEP setting by the same rule.";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt(v: Option<f64>, digits: usize, suffix: &str) -> String {
    v.filter(|x| x.is_finite())
        .map_or("-".into(), |x| format!("{x:.digits$}{suffix}"))
}

fn summary_cells(i: usize, r: &SummaryRow) -> [String; 9] {
    [
        format!("#{}", i + 1),
        r.series.clone(),
        r.layer_steps.to_string(),
        opt(Some(r.mean_ratio), 3, ""),
        lambda_label(r.lambda),
        opt(r.llep_on_pct, 0, "%"),
        opt(r.speedup, 3, "×"),
        opt(r.always, 3, "×"),
        opt(r.ideal, 3, "×"),
    ]
}

const SUMMARY_HEAD: [&str; 9] = [
    "#",
    "series",
    "layer-steps",
    "mean max/mean load",
    "λ shown",
    "LLEP on",
    "speedup at λ",
    "no gate",
    "ideal bound",
];

fn input_lines(inputs: &[Input]) -> Vec<(String, String, usize, String)> {
    inputs
        .iter()
        .map(|i| {
            let mut sources: Vec<&str> = i.stats.sources.iter().map(|s| s.as_str()).collect();
            sources.sort();
            sources.dedup();
            let profile = i
                .meta
                .profile
                .as_ref()
                .and_then(|p| {
                    serde_json::from_value::<crate::sim::Profile>(p.clone())
                        .ok()
                        .map(|p| p.label())
                })
                .unwrap_or_default();
            (
                i.path.display().to_string(),
                i.meta.command.clone(),
                i.stats.rows,
                format!(
                    "{}{}",
                    sources.join(" + "),
                    if profile.is_empty() {
                        String::new()
                    } else {
                        format!("; profile {profile}")
                    }
                ),
            )
        })
        .collect()
}

pub fn html(
    inputs: &[Input],
    opts: &ReportOptions,
    sections: &[Section],
    summary: &[SummaryRow],
) -> String {
    let mut h = String::new();
    h.push_str(&format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t}</title>
<style>
body {{ font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 2em auto; max-width: 1320px; color: #222; line-height: 1.45; padding: 0 1em; }}
h1 {{ font-size: 1.7em; }} h2 {{ margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: .92em; }}
th, td {{ border: 1px solid #ccc; padding: .3em .6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child, td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
.missing {{ background: #fff7e0; border-left: 4px solid #e0a800; padding: .6em 1em; }}
.numbers {{ font-size: .9em; color: #333; }}
code, pre {{ background: #f6f6f6; font-size: .88em; }} pre {{ padding: .6em; overflow-x: auto; white-space: pre-wrap; }}
nav a {{ margin-right: 1em; }}
table.inputs td, table.inputs th {{ text-align: left; }}
</style></head><body>
<h1>{t}</h1>
"#,
        t = esc(&opts.title)
    ));
    h.push_str("<nav>");
    for s in sections {
        h.push_str(&format!("<a href=\"#{}\">{}</a>", s.id, esc(&s.title)));
    }
    h.push_str("</nav>\n<h2 id=\"summary\">Summary</h2>\n<table><tr>");
    for c in SUMMARY_HEAD {
        h.push_str(&format!("<th>{}</th>", esc(c)));
    }
    h.push_str("</tr>\n");
    for (i, r) in summary.iter().enumerate() {
        h.push_str("<tr>");
        for c in summary_cells(i, r) {
            h.push_str(&format!("<td>{}</td>", esc(&c)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n<p class=\"numbers\">Speedup: EP layer time divided by LLEP layer time, summed over the same layer-steps. λ shown: ");
    h.push_str(if opts.lambda.is_some() {
        "given with <code>--lambda</code>."
    } else {
        LAMBDA_RULE
    });
    h.push_str("</p>\n");
    for s in sections {
        h.push_str(&format!(
            "<h2 id=\"{}\">{}</h2>\n<p>{}</p>\n",
            s.id,
            esc(&s.title),
            esc(&s.caption)
        ));
        if let Some(m) = &s.missing {
            h.push_str(&format!("<p class=\"missing\">{}</p>\n", esc(m)));
        }
        for f in &s.figures {
            h.push_str(&format!(
                "<figure><img src=\"{f}.png\" alt=\"{}\"><figcaption><a href=\"{f}.svg\">SVG</a> · <a href=\"{f}.png\">PNG</a></figcaption></figure>\n",
                esc(&s.title)
            ));
        }
        if !s.numbers.is_empty() {
            h.push_str("<ul class=\"numbers\">\n");
            for n in &s.numbers {
                h.push_str(&format!("<li>{}</li>\n", esc(n)));
            }
            h.push_str("</ul>\n");
        }
    }
    h.push_str("<h2 id=\"inputs\">Inputs and how this report was made</h2>\n<table class=\"inputs\"><tr><th>results file</th><th>rows</th><th>source</th><th>command that wrote it</th></tr>\n");
    for (p, cmd, n, src) in input_lines(inputs) {
        h.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{n}</td><td>{}</td><td style=\"text-align:left\"><code>{}</code></td></tr>\n",
            esc(&p),
            esc(&src),
            esc(&cmd)
        ));
    }
    h.push_str("</table>\n");
    for n in &opts.notes {
        h.push_str(&format!("<p>{}</p>\n", esc(n)));
    }
    h.push_str(&format!(
        "<p>Report command:</p>\n<pre>{}</pre>\n<p class=\"numbers\">Figures drawn with plotters and the embedded DejaVu Sans font (PNG); SVG text names the font family <code>sans-serif</code> and is drawn with the viewer's font. {}</p>\n</body></html>\n",
        esc(&opts.command),
        esc(&crate::trace::meta::tool_version())
    ));
    h
}

pub fn markdown(
    inputs: &[Input],
    opts: &ReportOptions,
    sections: &[Section],
    summary: &[SummaryRow],
) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut m = format!("# {}\n\n## Summary\n\n", opts.title);
    m.push_str(&format!("| {} |\n", SUMMARY_HEAD.join(" | ")));
    m.push_str(&format!("|{}\n", " --- |".repeat(SUMMARY_HEAD.len())));
    for (i, r) in summary.iter().enumerate() {
        let cells: Vec<String> = summary_cells(i, r).iter().map(|c| cell(c)).collect();
        m.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    m.push_str(
        "\nSpeedup: EP layer time divided by LLEP layer time, summed over the same layer-steps.\n",
    );
    for s in sections {
        m.push_str(&format!("\n## {}\n\n{}\n\n", s.title, s.caption));
        if let Some(x) = &s.missing {
            m.push_str(&format!("> **No plot:** {x}\n\n"));
        }
        for f in &s.figures {
            m.push_str(&format!("![{}]({f}.png) ([SVG]({f}.svg))\n\n", s.title));
        }
        for n in &s.numbers {
            m.push_str(&format!("- {n}\n"));
        }
    }
    m.push_str(
        "\n## Inputs\n\n| results file | rows | source | command |\n| --- | --- | --- | --- |\n",
    );
    for (p, cmd, n, src) in input_lines(inputs) {
        m.push_str(&format!(
            "| `{}` | {n} | {} | `{}` |\n",
            cell(&p),
            cell(&src),
            cell(&cmd)
        ));
    }
    for n in &opts.notes {
        m.push_str(&format!("\n{n}\n"));
    }
    m.push_str(&format!(
        "\nReport command:\n\n```\n{}\n```\n",
        opts.command
    ));
    m
}
