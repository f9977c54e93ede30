// Drives the gateway's web console in a real headless Chromium (tests/console.rs):
// logs in with the admin token, screenshots the page, replays one dead letter through its
// button (accepting the confirmation) and prints what the page then says, as JSON.
//
//   node console.mjs BASE_URL ADMIN_TOKEN CORRELATION_ID SCREENSHOT.png
import puppeteer from "puppeteer-core";

const [base, token, correlationId, screenshot] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in CI: Chromium's sandbox needs user namespaces it may not have there.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  const asked = [];
  page.on("dialog", async (dialog) => {
    asked.push(dialog.message());
    await dialog.accept();
  });
  await page.goto(`${base}/admin/`, { waitUntil: "load" });
  await page.type("#token", token);
  await Promise.all([page.waitForNavigation(), page.click("#login")]);
  await page.waitForSelector("#dead-letters");
  const listed = await page.$$eval("#dead-letters tr", (rows) => rows.length - 1);
  const kinds = await page.$$eval("#kinds td a", (links) => links.map((a) => a.textContent));
  await page.screenshot({ path: screenshot, fullPage: true });
  await Promise.all([page.waitForNavigation(), page.click(`#replay-${correlationId}`)]);
  const done = await page.$eval("#done", (p) => p.textContent);
  console.log(JSON.stringify({ listed, kinds, asked, done }));
} finally {
  await browser.close();
}
