// afinar's web page: chat over /v1/chat/completions (streamed), and the studio
// (upload -> data check -> train with a live loss chart -> eval report -> chat with the result).
"use strict";

const $ = (id) => document.getElementById(id);
let history = [];
let personas = [];
let interview = null; // {questions, answers} while a guided interview runs

async function api(path, options = {}) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error ? body.error.message : `HTTP ${res.status}`);
  return body;
}

function bubble(role, text, cls = "") {
  const div = document.createElement("div");
  div.className = `msg ${role} ${cls}`;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function mark(div, info) {
  if (!info) return;
  const span = document.createElement("span");
  if (info.refused) {
    div.classList.add("refused");
    span.className = "mark";
    span.textContent = "Refused by the domain guard (out of domain)";
  } else if (info.mode === "strict") {
    span.className = "mark curated";
    span.textContent = `Curated answer (${info.source || "training data"})`;
  } else if (!(info.sources || []).length) return;
  if (span.textContent) div.appendChild(span);
  sources(div, info);
}

// The records a grounded answer was given (like citations), and any fact found in none of them.
function sources(div, info) {
  if (!(info.sources || []).length || info.refused) return;
  const box = document.createElement("div");
  box.className = "sources";
  const title = document.createElement("span");
  title.textContent = "From the records:";
  box.appendChild(title);
  for (const s of info.sources) {
    const item = document.createElement("span");
    item.className = "source";
    item.textContent = `[${s.n}] ${s.question}`;
    item.title = s.source || "";
    box.appendChild(item);
  }
  if ((info.invented || []).length) {
    const warn = document.createElement("span");
    warn.className = "mark invented";
    warn.textContent = `Not in the records: ${info.invented.join(", ")}` +
      (info.replaced ? " (replaced by the best record's answer)" : "");
    box.appendChild(warn);
  }
  div.appendChild(box);
}

// --- chat -------------------------------------------------------------------------------------
async function loadPersonas(select) {
  const data = await api("/studio/personas");
  personas = data.personas;
  $("model").innerHTML = "";
  for (const p of personas) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = p.name;
    $("model").appendChild(opt);
  }
  if (select) $("model").value = select;
  $("studio-off").hidden = data.studio;
  $("studio-on").hidden = !data.studio;
  onModelChange();
}

function current() {
  return personas.find((p) => p.name === $("model").value) || personas[0];
}

function onModelChange() {
  const p = current();
  if (!p) return;
  $("mode").textContent = `guard: ${p.mode}`;
  $("incomplete").hidden = !p.incomplete;
  $("incomplete").textContent = p.incomplete ? `Unfinished run: ${p.incomplete}` : "";
  $("interview-start").hidden = p.interview.length === 0;
  resetChat();
}

function resetChat() {
  history = [];
  interview = null;
  $("messages").innerHTML = "";
}

async function send(text) {
  bubble("user", text);
  if (interview) return interviewStep(text);
  history.push({ role: "user", content: text });
  await complete();
}

async function complete() {
  const div = bubble("assistant", "…");
  $("send").disabled = true;
  let answer = "";
  let info = null;
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: $("model").value, messages: history, stream: true }),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${res.status}`);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        answer += chunk.choices[0].delta.content || "";
        if (chunk.afinar) info = chunk.afinar;
        div.textContent = answer || "…";
      }
    }
    if (info && info.replaced) answer = info.answer;  // the streamed text invented a fact
    div.textContent = answer.trim();
    mark(div, info);
    history.push({ role: "assistant", content: answer.trim() });
  } catch (err) {
    div.textContent = `Error: ${err.message}`;
    div.classList.add("refused");
    history.pop();
  } finally {
    $("send").disabled = false;
  }
}

function startInterview() {
  resetChat();
  interview = { questions: current().interview, answers: [] };
  bubble("system", "Guided interview: answer each question; the answers become one request.");
  bubble("assistant", interview.questions[0]);
}

async function interviewStep(text) {
  interview.answers.push(text);
  if (interview.answers.length < interview.questions.length) {
    bubble("assistant", interview.questions[interview.answers.length]);
    return;
  }
  const { prompt } = await api("/studio/interview", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: $("model").value, answers: interview.answers }),
  });
  interview = null;
  history = [{ role: "user", content: prompt }];
  await complete();
}

// --- studio -----------------------------------------------------------------------------------
let uploaded = null;
let jobTimer = null;
let nameTyped = false; // the run is named after the file until the user types a name

function showReport(report) {
  const box = document.createElement("div");
  box.className = `report ${report.ok ? "ok" : "bad"}`;
  const title = document.createElement("strong");
  title.textContent = report.ok ? `✔ ${report.file}: the data is usable` : `✘ ${report.file}: fix the errors below`;
  box.appendChild(title);
  const list = document.createElement("ul");
  for (const line of [...report.summary, ...report.messages]) {
    const li = document.createElement("li");
    li.textContent = line;
    list.appendChild(li);
  }
  box.appendChild(list);
  $("check-report").replaceChildren(box);
}

async function upload(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("file", $("dataset").files[0]);
  $("check-report").textContent = "Checking…";
  try {
    const report = await api("/studio/datasets", { method: "POST", body: form });
    showReport(report);
    uploaded = report.ok ? report.file : null;
    $("train").disabled = !report.ok;
    if (!nameTyped) $("run-name").value = report.file.replace(/\.[^.]+$/, "");
  } catch (err) {
    $("check-report").innerHTML = "";
    $("check-report").appendChild(Object.assign(document.createElement("p"), { className: "error", textContent: err.message }));
  }
}

async function train() {
  $("train").disabled = true;
  try {
    const job = await api("/studio/train", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ dataset: uploaded, name: $("run-name").value, epochs: Number($("epochs").value) }),
    });
    showJob(job);
    jobTimer = setInterval(() => pollJob(job.id), 2000);
  } catch (err) {
    $("job").textContent = `Error: ${err.message}`;
    $("train").disabled = false;
  }
}

async function pollJob(id) {
  const job = await api(`/studio/jobs/${id}`);
  showJob(job);
  if (job.state === "done" || job.state === "failed") {
    clearInterval(jobTimer);
    $("train").disabled = false;
    if (job.state === "done") showResult(job);
  }
}

function showJob(job) {
  const last = job.loss.length ? job.loss[job.loss.length - 1][1].toFixed(3) : "-";
  $("job").textContent = `${job.name}: ${job.state} (${job.seconds} s), ${job.loss.length} steps, last loss ${last}` +
    (job.error ? ` — ${job.error}` : "");
  drawLoss(job);
}

function drawLoss(job) {
  const canvas = $("loss-chart");
  const points = [...job.loss, ...job.eval_loss];
  if (!points.length) return;
  canvas.hidden = false;
  const ctx = canvas.getContext("2d");
  const [w, h, pad] = [canvas.width, canvas.height, 30];
  const maxX = Math.max(1, ...points.map((p) => p[0]));
  const ys = points.map((p) => p[1]);
  const [minY, maxY] = [Math.min(...ys), Math.max(...ys) + 1e-9];
  const x = (v) => pad + (v / maxX) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - minY) / (maxY - minY)) * (h - 2 * pad);
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#66727f";
  ctx.fillText(`loss ${maxY.toFixed(2)}`, 2, pad - 8);
  ctx.fillText(minY.toFixed(2), 2, h - pad + 12);
  ctx.fillText(`step ${maxX}`, w - pad - 30, h - 8);
  for (const [series, colour] of [[job.loss, "#1f5f8b"], [job.eval_loss, "#d1495b"]]) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    series.forEach(([sx, sy], i) => (i ? ctx.lineTo(x(sx), y(sy)) : ctx.moveTo(x(sx), y(sy))));
    ctx.stroke();
  }
}

function showResult(job) {
  const box = $("result");
  box.innerHTML = "";
  const s = job.summary || {};
  const p = document.createElement("p");
  p.textContent = `Eval loss: base ${fmt(s.base_eval_loss)} → tuned ${fmt(s.best_eval_loss)}.`;
  box.appendChild(p);
  if (job.report) {
    const a = Object.assign(document.createElement("a"), { href: `/studio/jobs/${job.id}/report`, target: "_blank",
      textContent: "Open the eval report" });
    box.appendChild(a);
  }
  const chat = Object.assign(document.createElement("button"), { id: "chat-result", textContent: `Chat with ${job.name}` });
  chat.addEventListener("click", async () => {
    const persona = await api(`/studio/jobs/${job.id}/load`, { method: "POST" });
    await loadPersonas(persona.name);
    switchTab("chat");
  });
  box.appendChild(chat);
}

const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "-");

// --- wiring -----------------------------------------------------------------------------------
function switchTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.panel === name);
  $("chat").hidden = name !== "chat";
  $("studio").hidden = name !== "studio";
}

document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => switchTab(tab.dataset.panel)));
$("model").addEventListener("change", onModelChange);
$("reset").addEventListener("click", resetChat);
$("interview-start").addEventListener("click", startInterview);
$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("send-form").requestSubmit();
  }
});
$("upload-form").addEventListener("submit", upload);
$("train").addEventListener("click", train);
$("run-name").addEventListener("input", () => (nameTyped = true));
loadPersonas().catch((err) => bubble("system", `Cannot reach the server: ${err.message}`));
