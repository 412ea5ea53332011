"""The Jinja2 template of the HTML report (rendered with autoescape=True; only plot SVG is ``|safe``)."""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d232b; background: #fafbfc; font-size: 14px; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 22px; margin: 8px 0 2px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #dde1e6;
     padding-bottom: 4px; } h3 { font-size: 14px; margin: 16px 0 6px; }
.sub { color: #5b6673; margin: 0 0 12px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; background: #fff; }
th, td { border: 1px solid #dde1e6; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
td.name { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; word-break: break-all; }
tr.total td { font-weight: 600; background: #f7f9fb; }
tr.module td.name { padding-left: 22px; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
.meta dt { color: #5b6673; } .meta dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  font-size: 13px; word-break: break-all; }
.v { font-weight: 600; padding: 0 6px; border-radius: 3px; white-space: nowrap; }
.v-ok, .v-improved { color: #17663a; background: #e3f4e9; }
.v-starved, .v-regressed, .v-flooded, .v-no-grad, .v-not-run, .v-undefined, .v-non-finite { color: #a21c1c;
  background: #fbe4e4; }
.v-uncertain { color: #7a5a00; background: #fdf3d1; }
.v-no-effect, .v-unchanged { color: #5b6673; background: #eef0f3; }
.v-added, .v-removed { color: #174f86; background: #e2eefa; }
.warning { border: 2px solid #c62828; background: #fdecea; padding: 10px 14px; border-radius: 4px; margin: 14px 0; }
.warning strong { color: #a21c1c; }
.suggestion { border-left: 4px solid #2e7d32; background: #eef7ef; padding: 8px 12px; margin: 12px 0; }
.suggestion.none { border-color: #c62828; background: #fdecea; }
figure { margin: 12px 0 22px; background: #fff; border: 1px solid #dde1e6; padding: 8px; border-radius: 4px; }
figure svg { max-width: 100%; height: auto; display: block; } figcaption { color: #5b6673; font-size: 13px; }
figcaption strong { color: #1d232b; }
details summary { cursor: pointer; color: #174f86; } table.config td { font-size: 12px; padding: 1px 6px; }
.scroll { max-height: 640px; overflow: auto; }
footer { color: #8a94a0; font-size: 12px; margin-top: 40px; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p class="sub">retention = ‖∇target‖ with the branch / ‖∇target‖ without it · band {{ band }} · verdicts on the
{{ mode }} estimate</p>

{% if warnings %}
<div class="warning" role="alert"><strong>Warning: these records may not be comparable.</strong>
<ul>{% for w in warnings %}<li>{{ w }}</li>{% endfor %}</ul></div>
{% endif %}

<h2>Run</h2>
<dl class="meta">
{% for key, value in metadata %}<dt>{{ key }}</dt><dd>{{ value }}</dd>
{% endfor %}<dt>config</dt><dd><details><summary>{{ config|length }} keys</summary>
<table class="config">{% for key, value in config %}<tr><td class="name">{{ key }}</td>
<td class="name">{{ value }}</td></tr>
{% endfor %}</table></details></dd>
</dl>

{% if notes or measurement_warnings %}
<h3>How it was measured</h3>
{% for w in measurement_warnings %}<div class="warning" role="alert"><strong>Warning:</strong> {{ w }}</div>
{% endfor %}<ul class="notes">{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>
{% endif %}

{% if suggestion %}
<div class="suggestion{% if suggestion.scale is none %} none{% endif %}"><strong>Suggestion:</strong>
{{ suggestion.message }}</div>
{% endif %}

{% if regression %}
<h2>Regression against the baseline</h2>
<p class="sub">baseline {{ regression.baseline }} · {{ regression.counts }}{% if regression.changes %} · changed:
{{ regression.changes }}{% endif %}</p>
<p class="sub">{{ regression.rule }}; improved / regressed = a better / worse band verdict, or closer to /
farther from the band.</p>
<div class="scroll"><table>
<thead><tr><th>branch</th>{% if regression.sweep %}<th>scale</th>{% endif %}<th>target</th><th>module</th>
<th>baseline</th><th>new</th><th>delta</th><th>baseline CI</th><th>new CI</th><th>verdict</th><th>why</th></tr></thead>
<tbody>
{% for r in regression.rows %}<tr class="{{ 'total' if r.total else 'module' }}"><td class="name">{{ r.branch }}</td>
{% if regression.sweep %}<td class="num">{{ r.scale }}</td>{% endif %}<td class="name">{{ r.target }}</td>
<td class="name">{{ r.module }}</td><td class="num">{{ r.old }}</td><td class="num">{{ r.new }}</td>
<td class="num">{{ r.delta }}</td><td class="num">{{ r.old_ci }}</td><td class="num">{{ r.new_ci }}</td>
<td><span class="v v-{{ r.verdict_class }}">{{ r.verdict }}</span></td><td>{{ r.why }}</td></tr>
{% endfor %}</tbody></table></div>
{% endif %}

{% if learning is not none %}
<h2>Learning</h2>
<p class="sub">learning ratio = held-out loss decrease with the branch / without it</p>
<div class="scroll"><table>
<thead><tr><th>branch</th><th>scale</th><th>decrease with</th><th>decrease without</th><th>learning ratio</th>
<th>interval</th><th>status</th></tr></thead>
<tbody>
{% for r in learning %}<tr><td class="name">{{ r.branch }}</td><td class="num">{{ r.scale }}</td>
<td class="num">{{ r.decrease_with }}</td><td class="num">{{ r.decrease_without }}</td>
<td class="num">{{ r.ratio }}</td><td class="num">{{ r.interval }}</td>
<td>{{ r.status }}{% if r.note %}: {{ r.note }}{% endif %}</td></tr>
{% endfor %}</tbody></table></div>
{% else %}
<h2>Retention</h2>
<div class="scroll"><table>
<thead><tr><th>branch</th>{% if sweep %}<th>scale</th>{% endif %}<th>target</th><th>module</th><th>norm with</th>
<th>norm without</th><th>retention</th><th>{{ ci_label }}</th><th>verdict</th></tr></thead>
<tbody>
{% for r in rows %}<tr class="{{ 'total' if r.total else 'module' }}"><td class="name">{{ r.branch }}</td>
{% if sweep %}<td class="num">{{ r.scale }}</td>{% endif %}<td class="name">{{ r.target }}</td>
<td class="name">{{ r.module }}</td><td class="num">{{ r.norm_with }}</td><td class="num">{{ r.norm_without }}</td>
<td class="num">{{ r.retention }}</td><td class="num">{{ r.ci }}</td>
<td><span class="v v-{{ r.verdict_class }}" title="{{ r.note }}">{{ r.verdict }}</span></td></tr>
{% endfor %}</tbody></table></div>
{% if hidden_modules %}<p class="sub">{{ hidden_modules }} module rows hidden (--no-modules).</p>{% endif %}
{% endif %}

<h2>Plots</h2>
{% for plot in plots %}<figure>
<figcaption><strong>{{ plot.title }}</strong>{% if plot.note %} — {{ plot.note }}{% endif %}</figcaption>
{{ plot.svg|safe }}
</figure>
{% endfor %}

<footer>gradflow {{ version }} · rendered from {{ source }} · the report reads the run record and recomputes
nothing</footer>
</main>
</body>
</html>
"""
