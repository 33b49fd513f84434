"""The web chat page served at `/`: one self-contained HTML file, no external assets.

It keeps the conversation in the browser and sends all of it with each request, as any OpenAI
client does; the server's session pool makes that cost only the new turn. Replies stream in
over server-sent events read from fetch()'s body.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mmdialog chat</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 760px; margin: 0 auto; padding: 12px; color: #222; }
  header { display: flex; gap: 8px; align-items: center; justify-content: space-between; }
  h1 { font-size: 18px; margin: 4px 0; }
  #messages { border: 1px solid #ddd; border-radius: 8px; padding: 8px; min-height: 320px; margin: 8px 0;
              overflow-y: auto; max-height: 65vh; }
  .msg { margin: 6px 0; padding: 6px 10px; border-radius: 8px; white-space: pre-wrap; }
  .user { background: #e8f0fe; margin-left: 60px; }
  .assistant { background: #f3f3f3; margin-right: 60px; }
  .error { background: #fde8e8; color: #900; }
  .msg img { max-width: 160px; max-height: 160px; display: block; margin-bottom: 4px; image-rendering: pixelated; }
  form { display: flex; gap: 6px; align-items: center; }
  #input { flex: 1; padding: 8px; font: inherit; }
  #status { color: #666; font-size: 13px; min-height: 1.2em; }
  #key { width: 140px; }
</style>
</head>
<body>
<header>
  <h1>mmdialog · {{MODEL}}</h1>
  <span><input id="key" type="password" placeholder="API key (if any)" autocomplete="off">
  <button id="new" type="button">New chat</button></span>
</header>
<div id="messages"></div>
<form id="form">
  <input id="image" type="file" accept="image/*" title="attach an image">
  <input id="input" type="text" placeholder="Type a message" autocomplete="off">
  <button id="send" type="submit">Send</button>
</form>
<div id="status"></div>
<script>
const $ = (id) => document.getElementById(id);
let history = [];  // OpenAI messages: the whole conversation is sent with every request
$("key").value = localStorage.getItem("mmdialog-key") || "";
$("key").onchange = () => localStorage.setItem("mmdialog-key", $("key").value);
$("new").onclick = () => { history = []; $("messages").innerHTML = ""; $("status").textContent = ""; };

function bubble(cls, text, imageUrl) {
  const div = document.createElement("div");
  div.className = "msg " + cls;
  if (imageUrl) { const img = document.createElement("img"); img.src = imageUrl; div.appendChild(img); }
  const span = document.createElement("span");
  span.textContent = text;
  div.appendChild(span);
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return span;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

$("form").onsubmit = async (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  const file = $("image").files[0];
  if (!text && !file) return;
  const imageUrl = file ? await readFile(file) : null;
  const content = [];
  if (imageUrl) content.push({type: "image_url", image_url: {url: imageUrl}});
  content.push({type: "text", text: text});
  bubble("user", text, imageUrl);
  $("input").value = ""; $("image").value = "";
  const out = bubble("assistant", "");
  out.parentElement.dataset.done = "0";
  $("send").disabled = true; $("status").textContent = "…";
  const messages = history.concat([{role: "user", content: content}]);
  const headers = {"Content-Type": "application/json"};
  if ($("key").value) headers["Authorization"] = "Bearer " + $("key").value;
  let reply = "", ok = false;
  try {
    const res = await fetch("/v1/chat/completions", {method: "POST", headers: headers,
      body: JSON.stringify({messages: messages, stream: true, stream_options: {include_usage: true}})});
    if (!res.ok) {
      const err = await res.json().catch(() => ({error: {message: res.statusText}}));
      throw new Error(err.error ? err.error.message : res.statusText);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim(); buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") { ok = true; continue; }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) $("status").textContent =
          `${chunk.usage.prompt_tokens} prompt tokens (${chunk.usage.prompt_tokens_details.cached_tokens} from cache), ` +
          `${chunk.usage.completion_tokens} generated`;
        for (const c of chunk.choices) if (c.delta && c.delta.content) { reply += c.delta.content; out.textContent = reply; }
      }
    }
    if (ok) history = messages.concat([{role: "assistant", content: reply}]);
  } catch (e) {
    out.parentElement.classList.add("error");
    out.textContent = "error: " + e.message;
    $("status").textContent = "";
  } finally {
    out.parentElement.dataset.done = "1";
    $("send").disabled = false;
    $("input").focus();
  }
};
</script>
</body>
</html>
"""
