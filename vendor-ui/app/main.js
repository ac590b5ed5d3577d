// The panel shell: session handling, the hash router, navigation, theme and language switches.
import { html, render, useState, useEffect } from "./lib.js";
import { api, sessionToken, setSessionToken, whenUnauthorized } from "./api.js";
import { t, language, setLanguage } from "./i18n.js";
import { LoginPage, PasswordChangePage } from "./pages/login.js";
import { DashboardPage } from "./pages/dashboard.js";
import { ChannelsPage } from "./pages/channels.js";
import { GroupsPage } from "./pages/groups.js";
import { ApiKeysPage } from "./pages/api-keys.js";
import { PricesPage } from "./pages/prices.js";
import { LogsPage } from "./pages/logs.js";
import { SettingsPage } from "./pages/settings.js";

const PAGES = [
  { path: "dashboard", title: "Dashboard", component: DashboardPage },
  { path: "channels", title: "Channels", component: ChannelsPage },
  { path: "groups", title: "Groups", component: GroupsPage },
  { path: "keys", title: "Client keys", component: ApiKeysPage },
  { path: "prices", title: "Prices", component: PricesPage },
  { path: "logs", title: "Logs", component: LogsPage },
  { path: "settings", title: "Settings", component: SettingsPage },
];

function currentRoute() {
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  return PAGES.find((page) => page.path === path) || PAGES[0];
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem("octopus.theme", theme);
}

function App() {
  // The session is "unknown" until /auth/me answers, so a reload with a stored token never flashes the login page.
  const [session, setSession] = useState(sessionToken() ? { state: "checking" } : { state: "anonymous" });
  const [route, setRoute] = useState(currentRoute());
  const [navigationOpen, setNavigationOpen] = useState(false);
  const [, setRenderTick] = useState(0);

  useEffect(() => {
    whenUnauthorized(() => setSession({ state: "anonymous" }));
    const onHashChange = () => { setRoute(currentRoute()); setNavigationOpen(false); };
    addEventListener("hashchange", onHashChange);
    // The hash may have changed between the first render and this effect (a link opened while the
    // page was loading): without this the panel stayed on the page it first rendered.
    setRoute(currentRoute());
    if (sessionToken()) {
      api("GET", "/auth/me").then(
        (user) => setSession({ state: user.must_change_password ? "must-change" : "ready", user }),
        () => setSession({ state: "anonymous" }),
      );
    }
    return () => removeEventListener("hashchange", onHashChange);
  }, []);

  const rerender = () => setRenderTick((tick) => tick + 1);
  const switchLanguage = () => { setLanguage(language() === "zh" ? "en" : "zh"); rerender(); };
  const switchTheme = () => { applyTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"); rerender(); };
  const logout = () => { setSessionToken(null); setSession({ state: "anonymous" }); };
  const preferences = html`<div class="preferences">
    <button type="button" class="ghost" data-testid="language-switch" onClick=${switchLanguage} aria-label=${t("Switch language")}>${language() === "zh" ? "English" : "中文"}</button>
    <button type="button" class="ghost" data-testid="theme-switch" onClick=${switchTheme} aria-label=${t("Switch theme")}>${document.documentElement.dataset.theme === "dark" ? t("Light") : t("Dark")}</button>
  </div>`;

  if (session.state === "checking") return html`<p class="boot">${t("Loading…")}</p>`;
  if (session.state === "anonymous") {
    return html`<main class="center-page">${preferences}<${LoginPage} onLoggedIn=${(login) => setSession({ state: login.must_change_password ? "must-change" : "ready", user: login })} /></main>`;
  }
  if (session.state === "must-change") {
    return html`<main class="center-page">${preferences}<${PasswordChangePage} forced=${true} onChanged=${() => setSession({ state: "ready" })} /></main>`;
  }
  const Page = route.component;
  return html`<div class="shell">
    <header class="topbar">
      <button type="button" class="ghost menu-button" aria-expanded=${navigationOpen} aria-controls="navigation"
        onClick=${() => setNavigationOpen(!navigationOpen)}>☰ <span class="visually-hidden">${t("Menu")}</span></button>
      <a class="brand" href="#/dashboard">octopus</a>
      ${preferences}
      <button type="button" class="ghost" data-testid="logout" onClick=${logout}>${t("Log out")}</button>
    </header>
    <nav id="navigation" class=${navigationOpen ? "navigation open" : "navigation"} aria-label=${t("Main")}>
      ${PAGES.map((page) => html`<a href=${`#/${page.path}`} aria-current=${page === route ? "page" : undefined}>${t(page.title)}</a>`)}
    </nav>
    <main class="content" id="content">
      <h1>${t(route.title)}</h1>
      <${Page} key=${`${route.path}-${language()}`} />
    </main>
  </div>`;
}

const appContainer = document.getElementById("app");
// The boot placeholder is plain HTML that Preact did not create, so it is removed before the first render.
appContainer.textContent = "";
render(html`<${App} />`, appContainer);
