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
// Long text is shown collapsed: its first SHOWN characters and a button for the rest, so that a
// megabyte of output (or a token of a megabyte, which browsers break into lines slowly) cannot
// stall the page.
const SHOWN = 4000;

function renderText(container, text) {
  text = String(text);
  const shown = text.length > SHOWN ? text.slice(0, SHOWN) : text;
  renderParts(container, shown);
  if (shown.length === text.length) return;
  const more = element("button", "more", `Show all (${text.length.toLocaleString()} characters)`);
  more.type = "button";
  more.addEventListener("click", (event) => {
    event.stopPropagation();  // not a click on the card (which ranks it)
    container.replaceChildren();
    renderParts(container, text);
  });
  container.append(element("span", "cut", "…"), more);
}

function renderParts(container, text) {
  const parts = text.split(/```[^\n`]*\n?/);
  parts.forEach((part, i) => {
    if (!part) return;
    if (i % 2 === 1) { const pre = element("pre"); pre.append(element("code", "", part.replace(/\n$/, ""))); container.append(pre); }
    else container.append(element("div", "text", part));
  });
}

// A completion's tag: A … Z, then AA, AB, … (as spreadsheets name columns)
function tagName(n) { return n < 26 ? String.fromCharCode(65 + n) : tagName(Math.floor(n / 26) - 1) + tagName(n % 26); }

// A prompt or completion: a string, or chat messages [{role, content}].
function renderMessage(container, value) {
  if (Array.isArray(value)) {
    for (const message of value) {
      container.append(element("div", "role", message.role || ""));
      renderText(container, typeof message.content === "string" ? message.content : JSON.stringify(message.content));
    }
  } else renderText(container, value);
}

// A little Markdown (headings, lists, code fences, paragraphs, **bold**, `code`), built from
// elements and textContent only: a guideline can hold any text and never becomes HTML.
function renderMarkdown(container, markdown) {
  container.replaceChildren();
  let list = null, code = null, paragraph = null;
  const end = () => { list = null; paragraph = null; };
  for (const line of String(markdown).split("\n")) {
    if (line.startsWith("```")) {
      if (code) { code = null; } else { end(); code = element("code"); const pre = element("pre"); pre.append(code); container.append(pre); }
      continue;
    }
    if (code) { code.textContent += line + "\n"; continue; }
    const heading = line.match(/^(#{1,4})\s+(.*)$/), item = line.match(/^\s*(?:[-*]|\d+\.)\s+(.*)$/);
    if (heading) { end(); container.append(inline(element(`h${Math.min(heading[1].length + 2, 6)}`), heading[2])); }
    else if (item) {
      paragraph = null;
      if (!list) { list = element(/^\s*\d/.test(line) ? "ol" : "ul"); container.append(list); }
      list.append(inline(element("li"), item[1]));
    } else if (!line.trim()) end();
    else {
      list = null;
      if (!paragraph) { paragraph = element("p"); container.append(paragraph); } else paragraph.append(" ");
      inline(paragraph, line.trim());
    }
  }
}

function inline(node, text) {   // **bold** and `code` spans, the rest as text
  text.split(/(\*\*[^*]+\*\*|`[^`]+`)/).forEach((part) => {
    if (/^\*\*.+\*\*$/.test(part)) node.append(element("strong", "", part.slice(2, -2)));
    else if (/^`.+`$/.test(part)) node.append(element("code", "", part.slice(1, -1)));
    else if (part) node.append(document.createTextNode(part));
  });
  return node;
}
