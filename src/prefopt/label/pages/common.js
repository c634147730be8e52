// Shared by the pages. Model output is only ever put into the page with textContent.
async function api(path, options = {}) {
  const response = await fetch(path, {credentials: "same-origin", ...options,
                                      headers: {"Content-Type": "application/json", ...(options.headers || {})}});
  if (response.status === 401) { location.href = "/login"; throw new Error("not logged in"); }
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(body && body.detail ? body.detail : response.statusText);
  return body;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Text with ``` code fences: prose keeps its line breaks, code goes in <pre>. Never HTML.
function renderText(container, text) {
  const parts = String(text).split(/```[^\n`]*\n?/);
  parts.forEach((part, i) => {
    if (!part) return;
    if (i % 2 === 1) { const pre = element("pre"); pre.append(element("code", "", part.replace(/\n$/, ""))); container.append(pre); }
    else container.append(element("div", "text", part));
  });
}

// A prompt or completion: a string, or chat messages [{role, content}].
function renderMessage(container, value) {
  if (Array.isArray(value)) {
    for (const message of value) {
      container.append(element("div", "role", message.role || ""));
      renderText(container, typeof message.content === "string" ? message.content : JSON.stringify(message.content));
    }
  } else renderText(container, value);
}
