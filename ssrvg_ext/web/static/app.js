// The demo page: pick an image (or a clip's frames for a video model), type expressions, draw the answers.
// The image is drawn on #image at its own resolution; each answer's mask (a PNG from the server) and box
// are drawn on #overlay, a transparent canvas of the same size on top.
"use strict";

const COLORS = [[255, 140, 0], [0, 200, 255], [255, 0, 200], [120, 255, 0], [255, 255, 255], [140, 80, 255],
                [255, 60, 60], [0, 0, 0]];
const $ = (id) => document.getElementById(id);
let info = null;        // /api/info
let files = [];         // the chosen image, or the frames of a clip, as Blobs
let clip = null;        // a video model's answer, drawn one frame at a time

function showError(msg) { $("error").textContent = msg || ""; }

async function loadInfo() {
  const r = await fetch("/api/info");
  info = await r.json();
  $("model").textContent = `${info.name} (${info.video ? "video: choose the frames of a clip" : "image"} model)`;
  if (info.video) {
    $("file").multiple = true;
    $("file").accept = "image/*,video/*";
    $("file-label").textContent = "A video file, or the frames of a clip (in name order)";
  }
  info.examples.forEach((name, i) => {
    const img = document.createElement("img");
    img.src = `/examples/${i}`;
    img.title = name;
    img.alt = name;
    img.addEventListener("click", async () => {
      const blob = await (await fetch(`/examples/${i}`)).blob();
      await choose([blob]);
    });
    $("examples").appendChild(img);
  });
  $("go").disabled = false;
}

async function drawImage(blob) {
  const bmp = await createImageBitmap(blob);
  for (const id of ["image", "overlay"]) {
    $(id).width = bmp.width;
    $(id).height = bmp.height;
  }
  // shown at least 480 px wide (small photos enlarged), at most 720; drawn at the image's own resolution
  $("image").style.width = `${Math.min(720, Math.max(480, bmp.width))}px`;
  $("image").getContext("2d").drawImage(bmp, 0, 0);
  $("overlay").getContext("2d").clearRect(0, 0, bmp.width, bmp.height);
}

async function choose(list) {
  showError("");
  clip = null;
  $("frames").style.display = "none";
  $("results").querySelector("tbody").innerHTML = "";
  const limit = info ? info.limits.max_bytes : Infinity;
  const total = list.reduce((s, f) => s + f.size, 0);
  if (total > limit) {
    files = [];
    showError(`the upload is ${(total / 2 ** 20).toFixed(1)} MiB; this demo takes at most ${(limit / 2 ** 20).toFixed(1)} MiB`);
    return;
  }
  files = list;
  if (isVideoFile()) return;  // shown frame by frame once the server has decoded it
  try {
    await drawImage(list[0]);
  } catch (e) {
    showError("the browser cannot show this file as an image (the server will say what is wrong)");
  }
}

async function paintMask(ctx, b64, color, w, h) {
  const bmp = await createImageBitmap(b64Blob(b64, "image/png"));
  const tmp = new OffscreenCanvas(w, h).getContext("2d");
  tmp.drawImage(bmp, 0, 0);
  const m = tmp.getImageData(0, 0, w, h).data;
  const out = ctx.getImageData(0, 0, w, h);
  for (let i = 0; i < m.length; i += 4) {
    if (m[i] > 127) {
      out.data[i] = color[0]; out.data[i + 1] = color[1]; out.data[i + 2] = color[2]; out.data[i + 3] = 140;
    }
  }
  ctx.putImageData(out, 0, 0);
}

function paintBox(ctx, box, color) {
  const [x0, y0, x1, y1] = box;
  if (x1 <= x0 || y1 <= y0) return;  // no object found
  ctx.strokeStyle = `rgb(${color.join(",")})`;
  ctx.lineWidth = 2;
  ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
}

function addRow(i, text, score, box) {
  const tr = document.createElement("tr");
  tr.className = "result";
  tr.dataset.box = JSON.stringify(box);
  tr.dataset.score = String(score);
  const c = COLORS[i % COLORS.length];
  tr.innerHTML = `<td><span class="swatch" style="background: rgb(${c.join(",")})"></span></td><td></td>` +
                 `<td>${score === null ? "-" : score.toFixed(3)}</td><td>${box.map((v) => v.toFixed(1)).join(", ")}</td>`;
  tr.children[1].textContent = text;
  $("results").querySelector("tbody").appendChild(tr);
}

function isVideoFile() {
  return info && info.video && files.length === 1 && (files[0].type || "").startsWith("video/");
}

function b64Blob(b64, type) {
  return new Blob([Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0))], {type});
}

async function drawClipFrame(t) {
  await drawImage(clip.frames[t].frame_jpg ? b64Blob(clip.frames[t].frame_jpg, "image/jpeg") : files[t]);
  const f = clip.frames[t];
  const ctx = $("overlay").getContext("2d");
  await paintMask(ctx, f.mask_png, COLORS[0], clip.width, clip.height);
  paintBox(ctx, f.box, COLORS[0]);
  $("frame-no").textContent = String(t + 1);
  $("stage").dataset.frame = String(t);
}

async function run() {
  showError("");
  const texts = $("text").value.split("\n").map((s) => s.trim()).filter((s) => s);
  if (!files.length) return showError(info.video ? "choose the frames of a clip first" : "choose an image first");
  if (!texts.length) return showError("type an expression");
  const q = texts.map((t) => "text=" + encodeURIComponent(t)).join("&");
  $("go").disabled = true;
  $("status").textContent = "working\u2026";
  $("stage").dataset.done = "0";
  try {
    let r;
    if (isVideoFile()) {
      r = await fetch(`/api/clip?${q}`, {method: "POST", body: files[0]});
    } else if (info.video) {
      const sorted = [...files].sort((a, b) => (a.name || "").localeCompare(b.name || ""));
      files = sorted;
      r = await fetch(`/api/clip?${q}`, {method: "POST", body: new Blob(sorted),
                                        headers: {"X-Frame-Lengths": sorted.map((f) => f.size).join(",")}});
    } else {
      r = await fetch(`/api/predict?${q}`, {method: "POST", body: files[0]});
    }
    const ans = await r.json();
    if (!r.ok) throw new Error(ans.error || `the server answered ${r.status}`);
    $("results").querySelector("tbody").innerHTML = "";
    if (info.video) {
      clip = ans;
      ans.frames.forEach((f, t) => addRow(0, `${ans.text} (frame ${t + 1})`, null, f.box));
      $("frame").max = String(ans.frames.length - 1);
      $("frame").value = "0";
      $("frames").style.display = "block";
      await drawClipFrame(0);
    } else {
      await drawImage(files[0]);
      const ctx = $("overlay").getContext("2d");
      for (const [i, res] of ans.results.entries()) {
        await paintMask(ctx, res.mask_png, COLORS[i % COLORS.length], ans.width, ans.height);
      }
      ans.results.forEach((res, i) => { paintBox(ctx, res.box, COLORS[i % COLORS.length]); addRow(i, res.text, res.score, res.box); });
    }
    $("status").textContent = `${ans.time_ms.toFixed(0)} ms on the server`;
    $("stage").dataset.done = "1";
  } catch (e) {
    $("status").textContent = "";
    showError(e.message);
    $("stage").dataset.done = "error";
  } finally {
    $("go").disabled = false;
  }
}

$("file").addEventListener("change", () => choose([...$("file").files]));
$("go").addEventListener("click", run);
$("frame").addEventListener("input", () => drawClipFrame(Number($("frame").value)));
loadInfo().catch((e) => showError(`cannot reach the demo server (${e.message})`));
