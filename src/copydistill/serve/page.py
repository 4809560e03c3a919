"""The service's page: drop or pick an image, see its matches as thumbnails with scores, in the
look of the HTML galleries (``search.gallery.STYLE``). One file, no external assets; it talks to
the JSON API with fetch()."""

from __future__ import annotations

from copydistill.search.gallery import STYLE

EXTRA_STYLE = """
#drop{border:2px dashed #8aa4d6;border-radius:8px;padding:28px;text-align:center;background:#fff;
 color:#555;margin:0 0 12px;cursor:pointer}#drop.over{background:#eef3fc;border-color:#2a6fdb}
#status{font-size:14px;color:#555;margin:0 0 10px}#status.error{color:#b3261e}
.controls{font-size:14px;margin:0 0 10px}.controls input{margin-right:12px}
"""

SCRIPT = """
const $ = (id) => document.getElementById(id);
function headers() {
  const key = $('key') ? $('key').value : '';
  return key ? {'X-API-Key': key} : {};
}
function say(text, error) { const s = $('status'); s.textContent = text; s.className = error ? 'error' : ''; }
async function loadInfo() {
  try {
    const r = await fetch('/v1/index', {headers: headers()});
    const info = await r.json();
    if (!r.ok) { say(info.error, true); return; }
    $('info').textContent = `index: ${info.count} references, model ${info.model} (${info.dims} dims); ` +
      `threshold ${info.threshold.value === null ? 'none' : info.threshold.value.toFixed(3)}: ${info.threshold.source}`;
  } catch (e) { say('cannot reach the server: ' + e, true); }
}
function figure(src, caption, score, kind) {
  const fig = document.createElement('figure');
  fig.className = kind;
  const img = document.createElement('img');
  img.src = src; img.alt = caption;
  fig.appendChild(img);
  if (score !== null) {
    const s = document.createElement('div'); s.className = 'score'; s.textContent = score.toFixed(3);
    fig.appendChild(s);
  }
  const c = document.createElement('figcaption'); c.textContent = caption; fig.appendChild(c);
  return fig;
}
async function thumb(url) {
  const r = await fetch(url, {headers: headers()});
  return r.ok ? URL.createObjectURL(await r.blob()) : '';
}
async function search(file) {
  say(`searching for ${file.name} ...`);
  const form = new FormData();
  form.append('files', file, file.name);
  form.append('k', $('k').value);
  let r, body;
  try {
    r = await fetch('/v1/search', {method: 'POST', body: form, headers: headers()});
    body = await r.json();
  } catch (e) { say('request failed: ' + e, true); return; }
  if (!r.ok) { say(body.error || ('HTTP ' + r.status), true); return; }
  const q = body.queries[0];
  const row = document.createElement('div'); row.className = 'row result';
  const label = document.createElement('div'); label.className = 'label';
  label.textContent = `query: ${file.name}`; row.appendChild(label);
  const tiles = document.createElement('div'); tiles.className = 'tiles';
  tiles.appendChild(figure(URL.createObjectURL(file), file.name, null, 'head'));
  const arrow = document.createElement('div'); arrow.className = 'arrow'; arrow.innerHTML = '&rarr;';
  tiles.appendChild(arrow);
  if (!q.matches.length) {
    const none = document.createElement('div'); none.className = 'more'; none.textContent = 'no match';
    tiles.appendChild(none);
  }
  for (const m of q.matches) {
    const fig = figure(await thumb(m.thumbnail), m.reference, m.score, m.above_threshold ? 'ok match' : 'low match');
    fig.title = m.path; fig.dataset.reference = m.reference;
    tiles.appendChild(fig);
  }
  row.appendChild(tiles);
  $('results').prepend(row);
  const hits = q.matches.filter(m => m.above_threshold).length;
  say(`${file.name}: ${q.matches.length} matches, ${hits} at or above the threshold (green)`);
}
function files(list) { for (const f of list) search(f); }
window.addEventListener('load', () => {
  const drop = $('drop');
  drop.addEventListener('click', (e) => { if (e.target !== $('file')) $('file').click(); });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); files(e.dataTransfer.files); });
  $('file').addEventListener('change', (e) => { files(e.target.files); e.target.value = ''; });
  if ($('key')) $('key').addEventListener('change', loadInfo);
  loadInfo();
});
"""


def page_html(needs_key: bool = False) -> str:
    key = ('<label>API key <input id="key" type="password" autocomplete="off"></label>'
           if needs_key else "")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>copydistill: find copies</title>"
        f"<style>{STYLE}{EXTRA_STYLE}</style></head><body>"
        "<h1>copydistill: find copies</h1>"
        '<p class="summary" id="info">loading the index ...</p>'
        f'<div class="controls">{key}<label>matches <input id="k" type="number" value="5" min="1" '
        'max="100" style="width:4em"></label></div>'
        '<div id="drop">Drop an image here, or click to pick one'
        '<input id="file" type="file" accept="image/*,.heic,.heif,.avif" multiple></div>'
        '<div id="status"></div><div id="results"></div>'
        '<p class="summary">Blue: your image. Then its matches, best first, with their scores; '
        "green: at or above the index's threshold.</p>"
        f"<script>{SCRIPT}</script></body></html>"
    )
