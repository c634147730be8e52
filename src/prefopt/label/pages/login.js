document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("status");
  const response = await fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json"},
                                              body: JSON.stringify({token: document.getElementById("token").value})});
  if (!response.ok) { status.textContent = "That token is not known."; status.className = "status error"; return; }
  const who = await response.json();
  location.href = who.role === "admin" ? "/admin" : "/label";
});
