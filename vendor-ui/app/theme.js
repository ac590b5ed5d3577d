// Applies the remembered or system theme before the first paint so the page never flashes the wrong colours.
// A classic script loaded from the head, not inline: the panel's Content-Security-Policy allows only scripts from the gateway itself.
document.documentElement.dataset.theme = localStorage.getItem("octopus.theme") || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
